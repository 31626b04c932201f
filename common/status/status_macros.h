// Status plumbing shared by every module.
//
// Modules return absl::Status / absl::StatusOr<T> across their boundaries and
// never let exceptions escape. These macros keep the happy path readable:
//
//   HEARTH_RETURN_IF_ERROR(file.Write(bytes));
//   HEARTH_ASSIGN_OR_RETURN(auto header, ParseHeader(bytes));
//
// Errors are mapped to gRPC codes exactly once, in the front ends (see
// common/grpc/status_conversion.h).
#ifndef HEARTH_COMMON_STATUS_STATUS_MACROS_H_
#define HEARTH_COMMON_STATUS_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HEARTH_STATUS_CONCAT_INNER_(a, b) a##b
#define HEARTH_STATUS_CONCAT_(a, b) HEARTH_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function
// when it is not OK.
#define HEARTH_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status hearth_status_ = (expr);          \
    if (!hearth_status_.ok()) return hearth_status_; \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status,
// otherwise move-assigns the value to `lhs`, which may be a declaration (`auto
// x`).
#define HEARTH_ASSIGN_OR_RETURN(lhs, rexpr) \
  HEARTH_ASSIGN_OR_RETURN_IMPL_(            \
      HEARTH_STATUS_CONCAT_(hearth_statusor_, __LINE__), lhs, rexpr)

#define HEARTH_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // HEARTH_COMMON_STATUS_STATUS_MACROS_H_
