// reflection.cc: ServerReflectionInfo (reflection.h), one BidiCall per
// stream. A file is sent with every file it imports, transitively, so a
// client can build the descriptors from one answer.
#include "reflection.h"

#include <set>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include "calls.h"

namespace sessiond
{

using grpc::reflection::v1alpha::ServerReflection;
using grpc::reflection::v1alpha::ServerReflectionRequest;
using grpc::reflection::v1alpha::ServerReflectionResponse;
namespace pb = google::protobuf;

namespace
{

void add_file(const pb::FileDescriptor *file, std::set<const pb::FileDescriptor *> *seen,
              grpc::reflection::v1alpha::FileDescriptorResponse *out)
{
    if (!seen->insert(file).second)
        return;
    pb::FileDescriptorProto proto;
    file->CopyTo(&proto);
    proto.SerializeToString(out->add_file_descriptor_proto());
    for (int i = 0; i < file->dependency_count(); ++i)
        add_file(file->dependency(i), seen, out);
}

void not_found(const std::string &what, ServerReflectionResponse *resp)
{
    resp->mutable_error_response()->set_error_code(static_cast<int32_t>(grpc::StatusCode::NOT_FOUND));
    resp->mutable_error_response()->set_error_message(what + " not found");
}

} // namespace

struct ReflectionService::Methods {
    BidiMethod<RawRequests<ServerReflection::AsyncService>, ServerReflectionRequest, ServerReflectionResponse> info;
};

ReflectionService::ReflectionService(std::vector<std::string> services) : services_(std::move(services))
{
    methods_.reset(
        new Methods{{&async_, async_.raw_method("grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo"),
                     [this](const ServerReflectionRequest &req, ServerReflectionResponse *resp) {
                         answer(req, resp);
                         return grpc::Status::OK;
                     },
                     nullptr}});
}

ReflectionService::~ReflectionService() = default;

void ReflectionService::listen(grpc::ServerCompletionQueue *cq)
{
    BidiCall<RawRequests<ServerReflection::AsyncService>, ServerReflectionRequest, ServerReflectionResponse>::listen(
        &methods_->info, cq);
}

void ReflectionService::answer(const ServerReflectionRequest &req, ServerReflectionResponse *resp) const
{
    const pb::DescriptorPool *pool = pb::DescriptorPool::generated_pool();
    resp->set_valid_host(req.host());
    *resp->mutable_original_request() = req;
    std::set<const pb::FileDescriptor *> seen;
    switch (req.message_request_case()) {
    case ServerReflectionRequest::kListServices:
        for (const std::string &name : services_)
            resp->mutable_list_services_response()->add_service()->set_name(name);
        return;
    case ServerReflectionRequest::kFileByFilename: {
        const pb::FileDescriptor *f = pool->FindFileByName(req.file_by_filename());
        if (f == nullptr)
            return not_found("file " + req.file_by_filename(), resp);
        return add_file(f, &seen, resp->mutable_file_descriptor_response());
    }
    case ServerReflectionRequest::kFileContainingSymbol: {
        const pb::FileDescriptor *f = pool->FindFileContainingSymbol(req.file_containing_symbol());
        if (f == nullptr)
            return not_found("symbol " + req.file_containing_symbol(), resp);
        return add_file(f, &seen, resp->mutable_file_descriptor_response());
    }
    case ServerReflectionRequest::kFileContainingExtension: {
        const auto &ext = req.file_containing_extension();
        const pb::Descriptor *type = pool->FindMessageTypeByName(ext.containing_type());
        const pb::FieldDescriptor *field =
            type == nullptr ? nullptr : pool->FindExtensionByNumber(type, ext.extension_number());
        if (field == nullptr)
            return not_found("extension " + std::to_string(ext.extension_number()) + " of " + ext.containing_type(),
                             resp);
        return add_file(field->file(), &seen, resp->mutable_file_descriptor_response());
    }
    case ServerReflectionRequest::kAllExtensionNumbersOfType: {
        const pb::Descriptor *type = pool->FindMessageTypeByName(req.all_extension_numbers_of_type());
        if (type == nullptr)
            return not_found("type " + req.all_extension_numbers_of_type(), resp);
        std::vector<const pb::FieldDescriptor *> fields;
        pool->FindAllExtensions(type, &fields);
        auto *out = resp->mutable_all_extension_numbers_response();
        out->set_base_type_name(type->full_name());
        for (const pb::FieldDescriptor *f : fields)
            out->add_extension_number(f->number());
        return;
    }
    case ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
        break;
    }
    resp->mutable_error_response()->set_error_code(static_cast<int32_t>(grpc::StatusCode::INVALID_ARGUMENT));
    resp->mutable_error_response()->set_error_message("the request names nothing to look up");
}

} // namespace sessiond
