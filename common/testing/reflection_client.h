// Lists a server's services through gRPC server reflection (v1alpha), the way
// grpcurl does. Test and tool code only: see proto/grpc/reflection/.
#ifndef HEARTH_COMMON_TESTING_REFLECTION_CLIENT_H_
#define HEARTH_COMMON_TESTING_REFLECTION_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grpc {
class Channel;
}

namespace hearth {

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel);

}  // namespace hearth

#endif  // HEARTH_COMMON_TESTING_REFLECTION_CLIENT_H_
