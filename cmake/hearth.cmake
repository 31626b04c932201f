# Helpers that keep every folder's CMakeLists.txt short and uniform.
#
#   hearth_library(NAME <target> SRCS <files...> [DEPS <targets...>] [TORCH])
#     A static library named <target>; its public include root is the repository
#     root, so headers are included as "common/status/status_macros.h".
#     TORCH links libtorch and reuses the shared torch precompiled header.
#
#   hearth_test(NAME <target> SRCS <files...> [DEPS <targets...>] [LABELS <l...>]
#               [TIMEOUT <seconds>] [TORCH])
#     A GoogleTest binary registered with ctest.
include_guard(GLOBAL)

function(_hearth_apply_torch target)
  target_link_libraries(${target} PUBLIC ${TORCH_LIBRARIES})
  target_include_directories(${target} SYSTEM PUBLIC ${TORCH_INCLUDE_DIRS})
  if(TARGET hearth_torch_pch)
    target_precompile_headers(${target} REUSE_FROM hearth_torch_pch)
  endif()
endfunction()

function(hearth_library)
  cmake_parse_arguments(ARG "TORCH" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(${ARG_NAME} STATIC ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
  if(ARG_TORCH)
    _hearth_apply_torch(${ARG_NAME})
  endif()
endfunction()

function(hearth_test)
  cmake_parse_arguments(ARG "TORCH" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  if(ARG_TORCH)
    _hearth_apply_process_fixes(${ARG_NAME})
    _hearth_apply_torch(${ARG_NAME})
  endif()
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set(labels unit)
  if(ARG_LABELS)
    set(labels ${ARG_LABELS})
  endif()
  set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${labels}"
    ENVIRONMENT "HEARTH_BUILD_DIR=${PROJECT_BINARY_DIR};HEARTH_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()

#   hearth_fuzzer(NAME <target> SRCS <files...> [DEPS <targets...>] [CORPUS <dir>])
#     A libFuzzer target, built only when HEARTH_FUZZ is ON (clang). It is
#     registered with ctest (label "fuzz") to run for HEARTH_FUZZ_SECONDS, starting
#     from CORPUS when given; any crash, leak, sanitizer report or hang fails it.
#     scripts/test builds all of them in build-fuzz/ and runs them.
function(hearth_fuzzer)
  if(NOT HEARTH_FUZZ)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME;CORPUS" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  target_link_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
  set(work ${CMAKE_CURRENT_BINARY_DIR}/${ARG_NAME}.corpus)
  set(seed_args)
  if(ARG_CORPUS)
    set(seed_args ${CMAKE_CURRENT_SOURCE_DIR}/${ARG_CORPUS})
  endif()
  add_test(NAME ${ARG_NAME}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
      $<TARGET_FILE:${ARG_NAME}> -max_total_time=${HEARTH_FUZZ_SECONDS}
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ${work} ${seed_args})
  file(MAKE_DIRECTORY ${work})
  set_tests_properties(${ARG_NAME} PROPERTIES LABELS fuzz
    TIMEOUT 600)
  set_property(GLOBAL APPEND PROPERTY HEARTH_FUZZERS ${ARG_NAME})
endfunction()

# Two process-wide link fixes every hearth executable needs once it links libtorch
# and the tokenizer (hearth_executable, and hearth_test with TORCH, apply both):
#  * libprotobuf is loaded first. It was needed while the tokenizer linked
#    libsentencepiece, which exports its own copy of protobuf-lite symbols
#    (generated protos and libtorch crashed at static initialisation against
#    it, and its model parser refused to run in a protobuf-first process).
#    hearth now reads tokenizer.model itself (common/tokenizer/
#    sentencepiece_model.h) and no binary links libsentencepiece; libtorch_cpu
#    and libonnx define only their own messages' protobuf templates. The link
#    order is kept as a harmless guard until it is removed with a full test run.
#  * common/metrics/thread_stack_fix.cc raises small thread-stack requests so that
#    civetweb's /metrics threads can hold libtorch's static TLS.
set(HEARTH_PROTOBUF_FIRST "-Wl,--no-as-needed" protobuf::libprotobuf "-Wl,--as-needed"
  CACHE INTERNAL "")

function(_hearth_apply_process_fixes target)
  target_sources(${target} PRIVATE ${PROJECT_SOURCE_DIR}/common/metrics/thread_stack_fix.cc)
  target_link_options(${target} PRIVATE
    "-Wl,--export-dynamic-symbol=pthread_attr_setstacksize")
  target_link_libraries(${target} PRIVATE ${HEARTH_PROTOBUF_FIRST} ${CMAKE_DL_LIBS})
endfunction()

#   hearth_executable(NAME <target> SRCS <files...> [DEPS <targets...>] [TORCH])
#     A service or tool binary with the process fixes above.
function(hearth_executable)
  cmake_parse_arguments(ARG "TORCH" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  _hearth_apply_process_fixes(${ARG_NAME})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  if(ARG_TORCH)
    _hearth_apply_torch(${ARG_NAME})
  endif()
endfunction()
