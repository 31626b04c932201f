#include "common/grpc/server_metrics.h"

#include <chrono>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"

namespace hearth {
namespace {

using grpc::experimental::InterceptionHookPoints;

struct Families {
  prometheus::Family<prometheus::Counter>* handled;
  prometheus::Family<prometheus::Histogram>* handling;
  prometheus::Gauge* active;
  std::atomic<int64_t>* active_calls;
};

// Splits "/pkg.Service/Method" into its two parts.
void SplitMethod(const char* full, std::string* service, std::string* method) {
  std::string name = full ? full : "";
  if (!name.empty() && name[0] == '/') name.erase(0, 1);
  size_t slash = name.find('/');
  if (slash == std::string::npos) {
    *service = "unknown";
    *method = name;
  } else {
    *service = name.substr(0, slash);
    *method = name.substr(slash + 1);
  }
}

class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(const Families& families, const char* full_method)
      : families_(families), start_(std::chrono::steady_clock::now()) {
    SplitMethod(full_method, &service_, &method_);
    families_.active->Increment();
    if (families_.active_calls) families_.active_calls->fetch_add(1);
  }

  // gRPC destroys the interceptor when the call is completely done.
  ~MetricsInterceptor() override {
    families_.active->Decrement();
    if (families_.active_calls) families_.active_calls->fetch_sub(1);
  }

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const double seconds = std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - start_)
                                 .count();
      families_.handled
          ->Add({{"grpc_service", service_},
                 {"grpc_method", method_},
                 {"grpc_code", GrpcCodeName(status.error_code())}})
          .Increment();
      families_.handling
          ->Add({{"grpc_service", service_}, {"grpc_method", method_}},
                prometheus::Histogram::BucketBoundaries{
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1, 2.5, 5, 10, 30, 60})
          .Observe(seconds);
    }
    methods->Proceed();
  }

 private:
  Families families_;
  std::chrono::steady_clock::time_point start_;
  std::string service_;
  std::string method_;
};

class MetricsInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  MetricsInterceptorFactory(prometheus::Registry& registry,
                            std::atomic<int64_t>* active_calls) {
    families_.active_calls = active_calls;
    families_.active = &prometheus::BuildGauge()
                            .Name("hearth_grpc_server_active_calls")
                            .Help("gRPC calls started and not yet finished.")
                            .Register(registry)
                            .Add({});
    families_.handled =
        &prometheus::BuildCounter()
             .Name("hearth_grpc_server_handled_total")
             .Help("gRPC calls completed, by final status code.")
             .Register(registry);
    families_.handling =
        &prometheus::BuildHistogram()
             .Name("hearth_grpc_server_handling_seconds")
             .Help("gRPC call duration from start to final status, in seconds.")
             .Register(registry);
  }

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(families_, info->method());
  }

 private:
  Families families_;
};

}  // namespace

const char* GrpcCodeName(int code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  if (code < 0 || code > 16) return "UNKNOWN";
  return kNames[code];
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeServerMetricsInterceptorFactory(prometheus::Registry& registry,
                                    std::atomic<int64_t>* active_calls) {
  return std::make_unique<MetricsInterceptorFactory>(registry, active_calls);
}

}  // namespace hearth
