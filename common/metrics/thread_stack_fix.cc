// Makes room for libtorch's thread-local storage in threads that ask for small
// stacks: the /metrics endpoint of any service that links libtorch would
// otherwise fail to start. hearth_executable() (cmake/hearth.cmake) compiles this
// file into every executable.
//
// glibc carves a thread's static TLS out of its stack, and pthread_create fails
// with EINVAL when the requested stack cannot hold it. libtorch pulls in
// libraries with large static TLS (OpenBLAS ~60 KiB, glog ~30 KiB, ...), about
// 100 KiB in all, while Debian's civetweb (under prometheus-cpp's Exposer)
// creates its threads with a fixed 100 KiB stack, so every process that links
// libtorch and serves /metrics got "null context when constructing
// CivetServer". This definition of pthread_attr_setstacksize, exported from the
// executable (-Wl,--export-dynamic-symbol), takes precedence over glibc's for
// every library in the process and raises requests below 1 MiB to 1 MiB; larger
// ones pass through unchanged.
//
// It must be compiled into the executable itself (not a static library, whose
// unreferenced objects the linker drops), which hearth_executable() does.
#include <dlfcn.h>
#include <pthread.h>

#include <cstddef>

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real =
      reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kMinimum = size_t{1} << 20;
  return real(attr, size < kMinimum ? kMinimum : size);
}
