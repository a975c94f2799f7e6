// reflection.h: grpc.reflection.v1alpha.ServerReflection on the
// completion-queue server, answering from the protobuf descriptors linked
// into sessiond (the generated pool). sessiond's own, because grpc++'s
// reflection plugin is a sync service (calls.h says why the server has none).
// Stateless apart from the list of services; safe from any queue thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "calls.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace sessiond
{

class ReflectionService
{
  public:
    // services: the fully-qualified names list_services answers with.
    explicit ReflectionService(std::vector<std::string> services);
    ~ReflectionService();

    RawRequests<grpc::reflection::v1alpha::ServerReflection::AsyncService> *async()
    {
        return &async_;
    }
    // Posts one request for ServerReflectionInfo on cq.
    void listen(grpc::ServerCompletionQueue *cq);

    // One answer; a name that is not found is an error_response (NOT_FOUND),
    // never the end of the stream.
    void answer(const grpc::reflection::v1alpha::ServerReflectionRequest &req,
                grpc::reflection::v1alpha::ServerReflectionResponse *resp) const;

  private:
    struct Methods;
    const std::vector<std::string> services_;
    RawRequests<grpc::reflection::v1alpha::ServerReflection::AsyncService> async_;
    std::unique_ptr<Methods> methods_;
};

} // namespace sessiond
