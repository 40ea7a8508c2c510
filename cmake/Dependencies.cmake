# Third-party dependencies, found the same way on Debian 12 (libtorch 1.13.1
# CPU) and on the GPU machine (libtorch 2.11 + CUDA from the PyTorch wheel;
# scripts/gpu_build.sh points CMAKE_PREFIX_PATH at it).
find_package(Threads REQUIRED)
find_package(ZLIB REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
add_library(pgolf::json ALIAS nlohmann_json::nlohmann_json)

find_package(CLI11 CONFIG QUIET)
if(TARGET CLI11::CLI11)
  add_library(pgolf::cli11 ALIAS CLI11::CLI11)
else()
  find_path(CLI11_INCLUDE CLI/CLI.hpp REQUIRED)
  add_library(pgolf_cli11 INTERFACE)
  target_include_directories(pgolf_cli11 SYSTEM INTERFACE ${CLI11_INCLUDE})
  add_library(pgolf::cli11 ALIAS pgolf_cli11)
endif()

# brotli: Debian's libbrotli-dev here; on the GPU machine (runtime only) the
# headers come from the carried Debian package (scripts/gpu_build.sh).
find_path(BROTLI_INCLUDE brotli/encode.h REQUIRED)
find_library(BROTLIENC_LIB brotlienc REQUIRED)
find_library(BROTLIDEC_LIB brotlidec REQUIRED)
find_library(BROTLICOMMON_LIB brotlicommon REQUIRED)
add_library(pgolf_brotli INTERFACE)
target_include_directories(pgolf_brotli SYSTEM INTERFACE ${BROTLI_INCLUDE})
target_link_libraries(pgolf_brotli INTERFACE ${BROTLIENC_LIB} ${BROTLIDEC_LIB} ${BROTLICOMMON_LIB})
add_library(pgolf::brotli ALIAS pgolf_brotli)

find_path(ZSTD_INCLUDE zstd.h REQUIRED)
find_library(ZSTD_LIB zstd REQUIRED)
add_library(pgolf_zstd INTERFACE)
target_include_directories(pgolf_zstd SYSTEM INTERFACE ${ZSTD_INCLUDE})
target_link_libraries(pgolf_zstd INTERFACE ${ZSTD_LIB})
add_library(pgolf::zstd ALIAS pgolf_zstd)

find_package(HDF5 REQUIRED COMPONENTS C)
add_library(pgolf_hdf5 INTERFACE)
target_include_directories(pgolf_hdf5 SYSTEM INTERFACE ${HDF5_INCLUDE_DIRS})
target_compile_definitions(pgolf_hdf5 INTERFACE ${HDF5_DEFINITIONS})
target_link_libraries(pgolf_hdf5 INTERFACE ${HDF5_LIBRARIES})
add_library(pgolf::hdf5 ALIAS pgolf_hdf5)

find_path(SENTENCEPIECE_INCLUDE sentencepiece_processor.h REQUIRED)
find_library(SENTENCEPIECE_LIB sentencepiece REQUIRED)
find_library(SENTENCEPIECE_TRAIN_LIB sentencepiece_train REQUIRED)
add_library(pgolf_sentencepiece INTERFACE)
target_include_directories(pgolf_sentencepiece SYSTEM INTERFACE ${SENTENCEPIECE_INCLUDE})
target_link_libraries(pgolf_sentencepiece INTERFACE ${SENTENCEPIECE_TRAIN_LIB} ${SENTENCEPIECE_LIB})
add_library(pgolf::sentencepiece ALIAS pgolf_sentencepiece)

find_package(Torch REQUIRED)
# libtorch 2.12+ headers require C++20; the older ones are fine with C++17.
if(Torch_VERSION VERSION_GREATER_EQUAL 2.12)
  set(CMAKE_CXX_STANDARD 20)
endif()
add_library(pgolf_torch INTERFACE)
# Torch's flags carry the ABI define; its include dirs are system dirs so its
# warnings stay out of ours.
separate_arguments(PGOLF_TORCH_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(pgolf_torch INTERFACE ${PGOLF_TORCH_FLAGS})
target_include_directories(pgolf_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
target_link_libraries(pgolf_torch INTERFACE ${TORCH_LIBRARIES})
if(TARGET torch_cuda OR CUDA_FOUND OR TORCH_CUDA_LIBRARIES)
  target_compile_definitions(pgolf_torch INTERFACE PGOLF_WITH_CUDA=1)
  message(STATUS "pgolf: libtorch ${Torch_VERSION} with CUDA")
  # nvcc for pgolf's own kernels (model/fused_cuda.cu).
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  if(NOT CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "52")
    set(CMAKE_CUDA_ARCHITECTURES 90)
  endif()
  set(PGOLF_CUDA_KERNELS ON)
else()
  target_compile_definitions(pgolf_torch INTERFACE PGOLF_WITH_CUDA=0)
  message(STATUS "pgolf: libtorch ${Torch_VERSION} (CPU)")
endif()
add_library(pgolf::torch ALIAS pgolf_torch)

# c10d backends for multi-rank runs (model/distributed.cpp only; see
# model/distributed.h). Gloo: libtorch has ProcessGroupGloo built in, its
# headers need gloo's (Debian: libgloo-dev; the wheel's torch/include if it
# ships them). NCCL: CUDA builds, with nccl.h from the wheel's nvidia-nccl
# package or the system.
find_path(PGOLF_GLOO_INCLUDE gloo/config.h HINTS ${TORCH_INCLUDE_DIRS})
if(PGOLF_GLOO_INCLUDE)
  set(PGOLF_WITH_GLOO 1)
else()
  set(PGOLF_WITH_GLOO 0)
endif()
option(PGOLF_NCCL "multi-rank CUDA runs through ProcessGroupNCCL (when found)" ON)
set(PGOLF_WITH_NCCL 0)
if(PGOLF_CUDA_KERNELS AND PGOLF_NCCL)
  get_filename_component(_pgolf_site "${TORCH_INSTALL_PREFIX}/.." ABSOLUTE)
  file(GLOB _pgolf_nccl_hints "${_pgolf_site}/nvidia/*/include" "${_pgolf_site}/nvidia/*/*/include")
  find_path(PGOLF_NCCL_INCLUDE nccl.h HINTS ${_pgolf_nccl_hints} ${CUDAToolkit_INCLUDE_DIRS} ${CUDA_INCLUDE_DIRS})
  find_path(PGOLF_C10D_NCCL torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp HINTS ${TORCH_INCLUDE_DIRS})
  if(PGOLF_NCCL_INCLUDE AND PGOLF_C10D_NCCL)
    set(PGOLF_WITH_NCCL 1)
  endif()
endif()
message(STATUS "pgolf: multi-rank backends: gloo ${PGOLF_WITH_GLOO}, nccl ${PGOLF_WITH_NCCL} ${PGOLF_NCCL_INCLUDE}")
