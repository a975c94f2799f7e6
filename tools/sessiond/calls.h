// calls.h: the call states of sessiond's completion-queue (async) gRPC
// server, one small class per RPC shape: UnaryCall (request, answer) and
// BidiCall (read one, answer it, read the next). The server-streaming calls
// (WatchSessions, health Watch) have their own classes next to their logic.
//
// Why async and not callback: with grpc++ 1.51's callback API every call
// crosses between gRPC's own polling threads and its executor; with only
// completion-queue methods registered (no callback, no sync method anywhere:
// one of either brings those pollers back), the threads that poll the
// network are ours and run the handler where the request was read
// (tools/sessiond/README.md, "Threads").
//
// Tags: every tag put on a completion queue is a CallOp; the thread that
// takes it from Next() calls run(ok) and nothing else.
//
// Lifetime: a call state is created by new, asks gRPC for one call of its
// method, and deletes itself when its last operation comes back from the
// queue: for a unary call the Finish; for a bidi stream the Finish (one
// operation at a time) and gRPC's done notification. A request that comes
// back with ok == false means the server is shutting down and no call came:
// the state deletes itself without asking for another. At shutdown the
// server is shut down first (in-flight calls finish or are cancelled after
// the grace period), then the queues. Server::Shutdown may return while the
// tags of calls it cancelled are still queued, and a call state may answer
// such a tag with one more operation (a stream's Finish after its failed
// read); started on a queue already shut down, that operation aborts the
// process. So every call state counts itself in LiveCalls, and the queues
// are shut down only once none is left (QueueThreads::stop).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <pthread.h>

#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>

#include "jsonlog.h"

namespace sessiond
{

class CallOp
{
  public:
    virtual void run(bool ok) = 0;

  protected:
    ~CallOp() = default;
};

// The call states alive, on every queue: a member of each (its constructor
// counts it, its destructor uncounts it). A state may be deleted on any
// thread (a watch stream's last reference can be a publisher's), hence one
// atomic; after the server's shutdown the count only goes down.
class LiveCalls
{
  public:
    LiveCalls()
    {
        count().fetch_add(1, std::memory_order_relaxed);
    }
    ~LiveCalls()
    {
        count().fetch_sub(1, std::memory_order_release);
    }
    LiveCalls(const LiveCalls &) = delete;
    LiveCalls &operator=(const LiveCalls &) = delete;
    static std::atomic<int64_t> &count()
    {
        static std::atomic<int64_t> n{0};
        return n;
    }
};

// A tag for one kind of operation of a call state that has several in flight
// at once (a write, the finish, the done notification).
template <class Owner> class OpTag final : public CallOp
{
  public:
    OpTag(Owner *owner, void (Owner::*fn)(bool)) : owner_(owner), fn_(fn)
    {
    }
    void run(bool ok) override
    {
        (owner_->*fn_)(ok);
    }

  private:
    Owner *owner_;
    void (Owner::*fn_)(bool);
};

// A queue thread's turn: the tags it takes from its queue without waiting
// (those of one network read, usually). Unary answers are held back until
// the turn ends and then sent back to back, so the client finds several in
// one read instead of waking for each (gRPC writes each answer at once).
class Turn
{
  public:
    class Answer
    {
      public:
        virtual void send() = 0;

      protected:
        ~Answer() = default;
    };
    // The turn of the calling thread, or null outside one.
    static Turn *&current()
    {
        static thread_local Turn *turn = nullptr;
        return turn;
    }
    void hold(Answer *a)
    {
        held_.push_back(a);
    }
    void send_all()
    {
        for (Answer *a : held_)
            a->send();
        held_.clear();
    }

  private:
    std::vector<Answer *> held_;
};

// A generated AsyncService whose methods served by UnaryCall and BidiCall
// are marked raw: gRPC hands their requests over as bytes and the call
// states parse them. With typed requests grpc++ 1.51 parses a unary request
// before the call reaches the application and answers one that does not
// parse itself, with INTERNAL "Unable to parse request"
// (PayloadAsyncRequest::FinalizeResult), and a stream message that does not
// parse fails the read as a half-close does; raw, both are answered
// INVALID_ARGUMENT here. Answers are still typed (serialized by gRPC).
template <class Base> class RawRequests final : public Base
{
  public:
    // Marks the method full_name ("package.Service.Method") raw and returns
    // its index in the service (the generated code's numbering: the order of
    // the proto). Before the service is registered with the server.
    int raw_method(const char *full_name)
    {
        const google::protobuf::MethodDescriptor *m =
            google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(full_name);
        GPR_ASSERT(m != nullptr);
        this->MarkMethodRaw(m->index());
        return m->index();
    }
    template <class Resp>
    void request_unary(int index, grpc::ServerContext *ctx, grpc::ByteBuffer *req,
                       grpc::ServerAsyncResponseWriter<Resp> *writer, grpc::ServerCompletionQueue *cq, void *tag)
    {
        this->RequestAsyncUnary(index, ctx, req, writer, cq, cq, tag);
    }
    template <class Resp>
    void request_bidi(int index, grpc::ServerContext *ctx,
                      grpc::ServerAsyncReaderWriter<Resp, grpc::ByteBuffer> *stream, grpc::ServerCompletionQueue *cq,
                      void *tag)
    {
        this->RequestAsyncBidiStreaming(index, ctx, stream, cq, cq, tag);
    }
};

// A request's bytes parsed into req; false with *status INVALID_ARGUMENT
// (naming the message type) when they are not one.
template <class Req> bool parse_request(grpc::ByteBuffer *bytes, Req *req, grpc::Status *status)
{
    if (grpc::SerializationTraits<Req>::Deserialize(bytes, req).ok())
        return true;
    *status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           "malformed request: the message does not parse as " + req->GetTypeName());
    return false;
}

// A unary method: its index in the (raw) service and the handler.
template <class Service, class Req, class Resp> struct UnaryMethod {
    Service *service;
    int index;
    std::function<grpc::Status(grpc::ServerContext &, const Req &, Resp *)> handle;
};

template <class Service, class Req, class Resp> class UnaryCall final : public CallOp, public Turn::Answer
{
  public:
    using Method = UnaryMethod<Service, Req, Resp>;
    // Asks for one call of m on cq; the state lives until that call is answered.
    static void listen(const Method *m, grpc::ServerCompletionQueue *cq)
    {
        new UnaryCall(m, cq);
    }

    void run(bool ok) override
    {
        if (answered_ || !ok) {
            delete this; // the answer went out (or the client left), or no call will come
            return;
        }
        listen(method_, cq_); // the next call of this method, before this one's work
        if (parse_request(&bytes_, &req_, &status_))
            status_ = method_->handle(ctx_, req_, &resp_);
        answered_ = true;
        if (Turn *turn = Turn::current())
            turn->hold(this);
        else
            send();
    }

    void send() override
    {
        if (status_.ok())
            writer_.Finish(resp_, status_, this);
        else
            writer_.FinishWithError(status_, this);
    }

  private:
    UnaryCall(const Method *m, grpc::ServerCompletionQueue *cq) : method_(m), cq_(cq), writer_(&ctx_)
    {
        m->service->request_unary(m->index, &ctx_, &bytes_, &writer_, cq, this);
    }
    ~UnaryCall() = default;

    LiveCalls live_; // first: uncounted only once every other member (the context) is gone
    const Method *method_;
    grpc::ServerCompletionQueue *cq_;
    grpc::ServerContext ctx_;
    grpc::ByteBuffer bytes_;
    Req req_;
    Resp resp_;
    grpc::ServerAsyncResponseWriter<Resp> writer_;
    grpc::Status status_;
    bool answered_ = false;
};

// A bidi method answered one message at a time: handle() fills the answer
// to each request; a status that is not OK ends the stream with it. ended()
// (optional) sees the stream's outcome, once: the status it was finished
// with, or CANCELLED when gRPC cancelled the call (the client cancelled, its
// deadline passed, a message was too large; which one the server is not
// told, and the client sees that status rather than the one finished with).
template <class Service, class Req, class Resp> struct BidiMethod {
    Service *service;
    int index; // in the (raw) service
    std::function<grpc::Status(const Req &, Resp *)> handle;
    std::function<void(const grpc::Status &)> ended;
};

// One request read, answered, and only then the next read: responses keep
// the requests' order, the server holds one request per stream (the client's
// further messages wait in HTTP/2 flow control), and exactly one operation is
// in flight, whose tag is the state itself. gRPC's done notification
// (done_tag_) comes besides, once a call came: a failed read is a half-close
// or a cancellation, told apart only there. The state is deleted once both
// its finish and that notification are back. Every tag of a call comes back
// on the queue it was asked on, so one thread runs them all: no lock.
template <class Service, class Req, class Resp> class BidiCall final : public CallOp
{
  public:
    using Method = BidiMethod<Service, Req, Resp>;
    static void listen(const Method *m, grpc::ServerCompletionQueue *cq)
    {
        new BidiCall(m, cq);
    }

    void run(bool ok) override
    {
        switch (state_) {
        case State::Waiting:
            if (!ok) {
                delete this; // no call came, so no done notification will
                return;
            }
            listen(method_, cq_);
            read();
            return;
        case State::Reading:
            if (!ok) { // the client half-closed (or went away): done
                finish(grpc::Status::OK);
                return;
            }
            resp_.Clear();
            {
                grpc::Status st;
                if (parse_request(&bytes_, &req_, &st))
                    st = method_->handle(req_, &resp_);
                if (!st.ok()) {
                    finish(st);
                    return;
                }
            }
            state_ = State::Writing;
            stream_.Write(resp_, this);
            return;
        case State::Writing:
            if (!ok) {
                finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
                return;
            }
            read();
            return;
        case State::Finishing:
            finish_back_ = true;
            if (done_)
                over();
            return;
        }
    }

  private:
    enum class State { Waiting, Reading, Writing, Finishing };
    BidiCall(const Method *m, grpc::ServerCompletionQueue *cq) : method_(m), cq_(cq), stream_(&ctx_)
    {
        ctx_.AsyncNotifyWhenDone(&done_tag_);
        m->service->request_bidi(m->index, &ctx_, &stream_, cq, this);
    }
    ~BidiCall() = default;
    void read()
    {
        state_ = State::Reading;
        stream_.Read(&bytes_, this);
    }
    void finish(const grpc::Status &st)
    {
        final_ = st;
        state_ = State::Finishing;
        stream_.Finish(st, this);
    }
    void on_done(bool)
    {
        done_ = true;
        if (finish_back_)
            over();
    }
    // The finish and the done notification are back: the outcome is known
    // (IsCancelled is valid once the notification came) and nothing of
    // gRPC's refers to this any more.
    void over()
    {
        if (method_->ended)
            method_->ended(ctx_.IsCancelled() ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled") : final_);
        delete this;
    }

    LiveCalls live_; // first: uncounted only once every other member (the context) is gone
    const Method *method_;
    grpc::ServerCompletionQueue *cq_;
    grpc::ServerContext ctx_;
    grpc::ServerAsyncReaderWriter<Resp, grpc::ByteBuffer> stream_;
    grpc::ByteBuffer bytes_;
    Req req_;
    Resp resp_;
    State state_ = State::Waiting;
    grpc::Status final_;
    bool finish_back_ = false;
    bool done_ = false;
    OpTag<BidiCall> done_tag_{this, &BidiCall::on_done};
};

// The threads that serve the server's completion queues, one queue each.
// Every thread runs whatever call its queue hands it, network reads
// included: gRPC polls the sockets from inside Next().
class QueueThreads
{
  public:
    // Before the server is built.
    void add_queues(grpc::ServerBuilder *builder, size_t n)
    {
        for (size_t i = 0; i < n; ++i)
            queues_.push_back(builder->AddCompletionQueue());
    }
    // After it started: listen(cq) posts the first request of every method
    // on cq; then one thread per queue.
    void start(const std::function<void(grpc::ServerCompletionQueue *)> &listen)
    {
        for (auto &q : queues_)
            listen(q.get());
        for (size_t i = 0; i < queues_.size(); ++i) {
            grpc::ServerCompletionQueue *q = queues_[i].get();
            threads_.emplace_back([q] { drain(q); });
            std::string name = "grpc-cq-" + std::to_string(i);
            pthread_setname_np(threads_.back().native_handle(), name.c_str());
        }
    }
    // After the server's Shutdown returned: waits, while the threads serve
    // the tags still coming (cancelled calls, failed requests), until every
    // call state has deleted itself; then shuts the queues down, and the
    // threads exit. Without threads (never started) no call state exists.
    void stop()
    {
        if (!threads_.empty())
            wait_no_calls();
        for (auto &q : queues_)
            q->Shutdown();
        if (threads_.empty()) { // never started
            for (auto &q : queues_)
                drain(q.get());
        }
        for (auto &t : threads_)
            t.join();
        threads_.clear();
    }

  private:
    // Every state's last tag comes back once the server is shut down (its
    // calls are finished or cancelled, its unmatched requests failed), so
    // this ends; a poll, since it runs once, at exit.
    static void wait_no_calls()
    {
        auto warn_at = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (LiveCalls::count().load(std::memory_order_acquire) != 0) {
            if (std::chrono::steady_clock::now() > warn_at) {
                log_line(AFSM_LOG_WARN, "gRPC call states still alive after the server's shutdown; waiting",
                         {{"calls", std::to_string(LiveCalls::count().load())}});
                warn_at += std::chrono::seconds(5);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    // A turn: one tag waited for, then those already there (at most
    // kTurnTags, to bound how long the first answer is held).
    static constexpr int kTurnTags = 64;
    static void drain(grpc::ServerCompletionQueue *q)
    {
        void *tag;
        bool ok;
        Turn turn;
        while (q->Next(&tag, &ok)) {
            Turn::current() = &turn;
            static_cast<CallOp *>(tag)->run(ok);
            bool more = true;
            for (int n = 1; more && n < kTurnTags; ++n) {
                more = q->AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) == grpc::CompletionQueue::GOT_EVENT;
                if (more)
                    static_cast<CallOp *>(tag)->run(ok);
            }
            Turn::current() = nullptr;
            turn.send_all();
        }
    }
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
    std::vector<std::thread> threads_;
};

} // namespace sessiond
