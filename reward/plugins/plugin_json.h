/* A tiny, allocation-light JSON reader for reward plugins written in C: finds a top-level key of
 * the request object and decodes string values. Enough for the example and test plugins; a real
 * plugin may use any JSON library it likes. Not a validator: malformed input gives "not found".
 */
#ifndef GRPO_REWARD_PLUGINS_PLUGIN_JSON_H_
#define GRPO_REWARD_PLUGINS_PLUGIN_JSON_H_

#include <stddef.h>
#include <string.h>

static const char* pj_skip_ws(const char* p, const char* end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  return p;
}

/* p at '"'; returns the position after the closing quote, or NULL. */
static const char* pj_skip_string(const char* p, const char* end) {
  for (++p; p < end; ++p) {
    if (*p == '\\') {
      ++p;
    } else if (*p == '"') {
      return p + 1;
    }
  }
  return NULL;
}

/* Returns the position after the value starting at p, or NULL. */
static const char* pj_skip_value(const char* p, const char* end) {
  int depth = 0;
  p = pj_skip_ws(p, end);
  while (p < end) {
    char c = *p;
    if (c == '"') {
      p = pj_skip_string(p, end);
      if (p == NULL) return NULL;
      if (depth == 0) return p;
      continue;
    }
    if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return p; /* end of an enclosing container: a scalar ended here */
      if (--depth == 0) return p + 1;
    } else if (depth == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
      return p; /* end of a number or literal */
    }
    ++p;
  }
  return depth == 0 ? p : NULL;
}

/* Finds top-level `key` in the JSON object json[0, len). On success sets [*val, *val_end) to the
 * raw value text and returns 1; returns 0 when absent or malformed. */
static int pj_find(const char* json, size_t len, const char* key, const char** val,
                   const char** val_end) {
  const char* end = json + len;
  const char* p = pj_skip_ws(json, end);
  size_t key_len = strlen(key);
  if (p >= end || *p != '{') return 0;
  ++p;
  for (;;) {
    const char *k, *k_end, *v_end;
    p = pj_skip_ws(p, end);
    if (p >= end || *p != '"') return 0;
    k = p + 1;
    p = pj_skip_string(p, end);
    if (p == NULL) return 0;
    k_end = p - 1;
    p = pj_skip_ws(p, end);
    if (p >= end || *p != ':') return 0;
    p = pj_skip_ws(p + 1, end);
    v_end = pj_skip_value(p, end);
    if (v_end == NULL) return 0;
    if ((size_t)(k_end - k) == key_len && memcmp(k, key, key_len) == 0) {
      *val = p;
      *val_end = v_end;
      return 1;
    }
    p = pj_skip_ws(v_end, end);
    if (p >= end || *p != ',') return 0;
    ++p;
  }
}

static int pj_hex4(const char* p, unsigned* out) {
  unsigned v = 0;
  int i;
  for (i = 0; i < 4; ++i) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      return 0;
  }
  *out = v;
  return 1;
}

/* Decodes the JSON string [v, v_end) (quotes included) into out, which must hold v_end - v
 * bytes (decoding never grows the text). Returns the decoded length, or -1 if not a string. */
static long pj_decode_string(const char* v, const char* v_end, char* out) {
  char* o = out;
  const char* p;
  if (v_end - v < 2 || *v != '"' || v_end[-1] != '"') return -1;
  for (p = v + 1; p < v_end - 1; ++p) {
    unsigned cp;
    if (*p != '\\') {
      *o++ = *p;
      continue;
    }
    if (++p >= v_end - 1) return -1;
    switch (*p) {
      case 'n':
        *o++ = '\n';
        continue;
      case 't':
        *o++ = '\t';
        continue;
      case 'r':
        *o++ = '\r';
        continue;
      case 'b':
        *o++ = '\b';
        continue;
      case 'f':
        *o++ = '\f';
        continue;
      case 'u':
        break;
      default:
        *o++ = *p;
        continue; /* \" \\ \/ */
    }
    if (v_end - 1 - (p + 1) < 4 || !pj_hex4(p + 1, &cp)) return -1;
    p += 4;
    if (cp >= 0xD800 && cp < 0xDC00 && v_end - 1 - (p + 1) >= 6 && p[1] == '\\' && p[2] == 'u') {
      unsigned lo;
      if (pj_hex4(p + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
      }
    }
    if (cp < 0x80) {
      *o++ = (char)cp;
    } else if (cp < 0x800) {
      *o++ = (char)(0xC0 | (cp >> 6));
      *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      *o++ = (char)(0xE0 | (cp >> 12));
      *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
      *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
      *o++ = (char)(0xF0 | (cp >> 18));
      *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
      *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
      *o++ = (char)(0x80 | (cp & 0x3F));
    }
  }
  return (long)(o - out);
}

#endif /* GRPO_REWARD_PLUGINS_PLUGIN_JSON_H_ */
