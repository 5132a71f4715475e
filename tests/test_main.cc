// Catch2 main for grpo_tests. Run one case: build/tests/grpo_tests "[safetensors]"
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
