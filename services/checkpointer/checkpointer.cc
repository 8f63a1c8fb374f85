#include "checkpointer/checkpointer.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "artifact/artifact.h"
#include "artifact/transfer.h"
#include "config/deployment_config.h"
#include "service/service.h"

namespace serve::checkpointer {
namespace {

// A store call slower than this is worth a warning: gets and puts queue behind it.
constexpr uint64_t kSlowStoreMs = 1000;

constexpr char kStopping[] = "the checkpointer is shutting down; retry against its replacement";

constexpr char kStagedSuffix[] = ".upload";

// Removes the staged uploads in `dir`: only files this class names, in case --staging-dir
// points at a directory that holds other things too.
int RemoveStagedFiles(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  int removed = 0;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > sizeof(kStagedSuffix) - 1 &&
        name.compare(name.size() - (sizeof(kStagedSuffix) - 1), std::string::npos, kStagedSuffix) ==
            0 &&
        fs::remove(it->path(), ec)) {
      ++removed;
    }
  }
  return removed;
}

}  // namespace

std::string ClientOf(const std::string& reply_subject) {
  size_t last_dot = reply_subject.rfind('.');
  return last_dot == std::string::npos ? reply_subject : reply_subject.substr(0, last_dot + 1);
}

int RemoveDeadStagingDirs(const std::string& parent, const std::string& prefix) {
  namespace fs = std::filesystem;
  std::error_code ec;
  int removed = 0;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.size() > 9 || pid_text.find_first_not_of("0123456789") != std::string::npos ||
        !it->is_directory(ec) || it->is_symlink(ec)) {
      continue;
    }
    // ESRCH only: EPERM means the process lives, under another user.
    pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::error_code removing;
    fs::remove_all(it->path(), removing);
    if (removing) {
      spdlog::warn("cannot remove the staging directory {} of a stopped checkpointer: {}",
                   it->path().string(), removing.message());
    } else {
      ++removed;
    }
  }
  return removed;
}

Checkpointer::Checkpointer(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                           CheckpointStore& store, std::string staging_dir,
                           std::string metrics_prefix)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      store_(store),
      staging_dir_(std::move(staging_dir)),
      metrics_registry_(std::move(metrics_prefix)),
      metrics_(metrics_registry_) {}

Checkpointer::~Checkpointer() {
  Stop();  // closes the collection timer; the loop's owner runs it to the end
  std::error_code ec;
  for (const auto& [key, upload] : uploads_) std::filesystem::remove(upload.path, ec);
  RemoveStagedFiles(staging_dir_);
  // Only when empty: it may be a directory the operator named that holds other things.
  std::filesystem::remove(staging_dir_, ec);
}

Status Checkpointer::Start() {
  std::error_code ec;
  std::filesystem::create_directories(staging_dir_, ec);
  if (ec) {
    return Status::Error("cannot create the upload staging directory " + staging_dir_ + ": " +
                         ec.message());
  }
  // Uploads do not survive a restart (their clients start again from offset 0), so what an
  // earlier run left is garbage.
  if (int removed = RemoveStagedFiles(staging_dir_); removed > 0) {
    spdlog::info("removed {} unfinished uploads an earlier run left in {}", removed, staging_dir_);
  }
  struct Route {
    const std::string& subject;
    void (Checkpointer::*handler)(const bus::Message&);
  };
  for (const Route& route : {Route{subjects_.ckpt_put, &Checkpointer::OnPut},
                             Route{subjects_.ckpt_get, &Checkpointer::OnGet},
                             Route{subjects_.ckpt_blob_stat, &Checkpointer::OnBlobStat},
                             Route{subjects_.ckpt_blob_put, &Checkpointer::OnBlobPut},
                             Route{subjects_.ckpt_blob_get, &Checkpointer::OnBlobGet}}) {
    auto handler = route.handler;
    Status status =
        bus_.Subscribe(route.subject, [this, handler](bus::Message& m) { (this->*handler)(m); });
    if (!status.ok()) return status;
  }
  if (blob_keep_s_ > 0) {
    auto keep_ms = static_cast<uint64_t>(blob_keep_s_ * 1000);
    collector_ = std::make_unique<BlobCollector>(keep_ms);
    uint64_t every_ms = std::clamp<uint64_t>(keep_ms / 4, 100, 600'000);
    collect_timer_ = new uv_timer_t;
    uv_timer_init(loop_, collect_timer_);
    collect_timer_->data = this;
    uv_timer_start(
        collect_timer_,
        [](uv_timer_t* timer) { static_cast<Checkpointer*>(timer->data)->CollectBlobs(); },
        every_ms, every_ms);
    uv_unref(reinterpret_cast<uv_handle_t*>(collect_timer_));  // never what keeps the loop up
  }
  return service::OnShutdownNotice(bus_, subjects_,
                                   [this](const std::string& reason) { OnShutdown(reason); });
}

void Checkpointer::Stop() {
  stopped_ = true;
  if (collect_timer_ != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(collect_timer_),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_timer_t*>(handle); });
    collect_timer_ = nullptr;
  }
}

void Checkpointer::CollectBlobs() {
  if (stopped_) return;
  // The controller's stored state is the evidence: without one that reads, nothing is judged
  // unused.
  auto state = CallStore("get", [&] { return store_.Get("controller/state"); });
  if (!state.ok()) {
    spdlog::warn("blob collection skipped: {}", state.error());
    return;
  }
  if (!state->has_value()) return;  // no controller has stored a state yet
  auto referenced = ReferencedArtifacts((*state)->data);
  if (!referenced.ok()) {
    spdlog::warn("blob collection skipped: the stored controller state does not read: {}",
                 referenced.error());
    return;
  }
  auto stored = CallStore("list_blobs", [&] { return store_.ListBlobs(); });
  if (!stored.ok()) {
    spdlog::warn("blob collection skipped: {}", stored.error());
    return;
  }
  for (const std::string& digest : collector_->Pass(*referenced, *stored, NowMs())) {
    bool uploading = false;
    for (const auto& [key, upload] : uploads_) uploading = uploading || key.rfind(digest, 0) == 0;
    if (uploading) continue;  // being uploaded again, for a deploy on its way
    Status removed = CallStore("delete_blob", [&] { return store_.DeleteBlob(digest); });
    if (!removed.ok()) {
      spdlog::warn("cannot remove the unused blob {}: {}", digest, removed.message());
      continue;
    }
    metrics_.BlobRemoved();
    spdlog::info("removed blob {}: no deployment has used it for {} s", digest, blob_keep_s_);
  }
}

uint64_t Checkpointer::NowMs() {
  uv_update_time(loop_);
  return uv_now(loop_);
}

uint64_t Checkpointer::ElapsedMs(uint64_t start_ms) { return NowMs() - start_ms; }

void Checkpointer::Reply(const bus::Message& request, const std::string& bytes) {
  if (request.reply.empty()) {
    spdlog::debug("request on {} had no reply subject; nothing to answer", request.subject);
    return;
  }
  Status sent = bus_.Respond(request, bytes);
  if (!sent.ok()) spdlog::warn("cannot answer on {}: {}", request.subject, sent.message());
}

namespace {

// URIs as people write them: a trailing '/' and the scheme's case do not make another store.
std::string Normalized(std::string uri) {
  while (!uri.empty() && uri.back() == '/') uri.pop_back();
  size_t scheme_end = uri.find("://");
  for (size_t i = 0; i < scheme_end && i < uri.size(); ++i) {
    uri[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(uri[i])));
  }
  return uri;
}

}  // namespace

std::string Checkpointer::WrongStore(const std::string& requested) const {
  if (requested.empty() || store_uri_.empty() || Normalized(requested) == Normalized(store_uri_)) {
    return "";
  }
  return "this checkpointer serves " + bus::RedactUrl(store_uri_) +
         ", but the request is for " + bus::RedactUrl(requested) +
         "; start the controller and the checkpointer with the same --checkpoint-path";
}

void Checkpointer::OnPut(const bus::Message& message) {
  wire::CheckpointPutReplyT reply;
  auto request = DecodeOrRefuse<wire::CheckpointPut, wire::CheckpointPutReply>("put", message);
  if (!request) return;
  const wire::CheckpointPutT& put = request->value();
  // A bad key is the request's fault: refused here, so the store's figures count only the store.
  Status key = ValidateKey(put.key);
  if (stopped_ || !WrongStore(put.store).empty() || !key.ok()) {
    reply.error = stopped_ ? kStopping : !key.ok() ? key.message() : WrongStore(put.store);
    metrics_.Answered("put", "refused");
    Reply(message, wire::EncodeReply(codec_, *request, reply));
    return;
  }

  uint64_t start_ms = NowMs();
  uint64_t start_ns = uv_hrtime();
  std::string_view data(reinterpret_cast<const char*>(put.data.data()), put.data.size());
  Status stored = store_.Put(put.key, put.generation, data);
  double put_seconds = static_cast<double>(uv_hrtime() - start_ns) / 1e9;
  uint64_t elapsed_ms = ElapsedMs(start_ms);
  if (stored.ok()) {
    metrics_.StoreCall("put", true, put_seconds);
    metrics_.Written(put.data.size());
    metrics_.Answered("put", "ok");
    reply.stored_generation = put.generation;
    spdlog::debug("put '{}' generation {} ({} bytes) in {} ms", put.key, put.generation,
                  put.data.size(), elapsed_ms);
  } else {
    reply.error = stored.message();
    // Tell a fenced-off writer which generation won, when the store can say. A put refused for
    // an older generation is the store working, not failing.
    auto current = CallStore("get", [&] { return store_.Get(put.key); });
    bool fenced = current.ok() && current->has_value() && (*current)->generation > put.generation;
    metrics_.StoreCall("put", fenced, put_seconds);
    metrics_.Answered("put", fenced ? "fenced" : "error");
    if (current.ok() && current->has_value()) reply.stored_generation = (*current)->generation;
    spdlog::warn("put '{}' generation {}: {}", put.key, put.generation, stored.message());
  }
  if (elapsed_ms > kSlowStoreMs) {
    spdlog::warn("storing '{}' in {} took {} ms; requests waited behind it", put.key,
                 store_.Describe(), elapsed_ms);
  }
  Reply(message, wire::EncodeReply(codec_, *request, reply));
}

void Checkpointer::OnGet(const bus::Message& message) {
  wire::CheckpointGetReplyT reply;
  auto request = DecodeOrRefuse<wire::CheckpointGet, wire::CheckpointGetReply>("get", message);
  if (!request) return;
  if (message.reply.empty()) {
    spdlog::debug("get on {} had no reply subject; nothing to answer", message.subject);
    return;
  }
  const wire::CheckpointGetT& get = request->value();
  Status key = ValidateKey(get.key);
  if (stopped_ || !WrongStore(get.store).empty() || !key.ok()) {
    reply.error = stopped_ ? kStopping : !key.ok() ? key.message() : WrongStore(get.store);
    metrics_.Answered("get", "refused");
    Reply(message, wire::EncodeReply(codec_, *request, reply));
    return;
  }

  uint64_t start_ms = NowMs();
  auto record = CallStore("get", [&] { return store_.Get(get.key); });
  uint64_t elapsed_ms = ElapsedMs(start_ms);
  metrics_.Answered("get", !record.ok() ? "error" : record->has_value() ? "ok" : "not_found");
  if (!record.ok()) {
    reply.error = record.error();
    spdlog::warn("get '{}': {}", get.key, record.error());
  } else if (record->has_value()) {
    const Record& found = **record;
    metrics_.Read(found.data.size());
    reply.found = true;
    reply.generation = found.generation;
    reply.data.assign(found.data.begin(), found.data.end());
    spdlog::debug("get '{}': generation {} ({} bytes) in {} ms", get.key, found.generation,
                  found.data.size(), elapsed_ms);
  } else {
    spdlog::debug("get '{}': not found", get.key);
  }
  if (elapsed_ms > kSlowStoreMs) {
    spdlog::warn("reading '{}' from {} took {} ms; requests waited behind it", get.key,
                 store_.Describe(), elapsed_ms);
  }
  Reply(message, wire::EncodeReply(codec_, *request, reply));
}

void Checkpointer::OnShutdown(const std::string& reason) {
  if (stopped_) return;
  std::string why = "shutdown requested on " + subjects_.shutdown;
  if (!reason.empty()) why += ": " + reason;
  Stop();
  if (on_shutdown_) on_shutdown_(why);
}

void Checkpointer::OnBlobStat(const bus::Message& message) {
  wire::BlobStatReplyT reply;
  auto request = DecodeOrRefuse<wire::BlobStat, wire::BlobStatReply>("blob_stat", message);
  if (!request) return;
  const char* outcome = "refused";
  if (stopped_) {
    reply.error = kStopping;
  } else if (auto size =
                 CallStore("blob_size", [&] { return store_.BlobSize(request->value().digest); });
             !size.ok()) {
    reply.error = size.error();
    outcome = "error";
  } else if (size->has_value()) {
    reply.found = true;
    reply.size = **size;
    outcome = "ok";
  } else {
    outcome = "not_found";
  }
  metrics_.Answered("blob_stat", outcome);
  Reply(message, wire::EncodeReply(codec_, *request, reply));
}

void Checkpointer::DropAbandonedUploads() {
  constexpr uint64_t kAbandonedAfterMs = 10 * 60 * 1000;
  uint64_t now = NowMs();
  for (auto it = uploads_.begin(); it != uploads_.end();) {
    if (it->second.last_chunk_ms != 0 && now - it->second.last_chunk_ms > kAbandonedAfterMs) {
      spdlog::info("dropping an upload of {} abandoned after {} of {} bytes",
                   it->first.substr(0, it->first.find('/')), it->second.received,
                   it->second.total_size);
      std::filesystem::remove(it->second.path);
      it = uploads_.erase(it);
    } else {
      ++it;
    }
  }
}

std::string Checkpointer::UploadRefusal(const wire::BlobPutT& put, const std::string& client,
                                        const std::string& upload_key) const {
  int in_progress = 0;
  for (const auto& [key, upload] : uploads_) {
    // Starting an upload over does not make it another one.
    if (upload.client == client && key != upload_key) ++in_progress;
  }
  if (in_progress >= limits_.max_uploads_per_client) {
    return "cannot start uploading " + put.digest + ": this client has " +
           std::to_string(in_progress) + " uploads in progress, the most the checkpointer takes " +
           "(--max-uploads-per-client " + std::to_string(limits_.max_uploads_per_client) +
           "); finish them first (an upload idle for 10 minutes is dropped)";
  }
  return "";
}

wire::BlobPutReplyT Checkpointer::ReceiveChunk(const wire::BlobPutT& put, const std::string& client,
                                               bool* failed) {
  wire::BlobPutReplyT reply;
  if (!config::IsArtifactDigest(put.digest)) {
    reply.error = "'" + put.digest + "' is not an artifact digest (sha256:<64 hex digits>)";
    return reply;
  }
  if (put.data.size() > artifact::kChunkBytes) {
    reply.error = "chunk of " + put.digest + " at offset " + std::to_string(put.offset) +
                  " holds " + std::to_string(put.data.size()) + " bytes; a chunk holds at most " +
                  std::to_string(artifact::kChunkBytes) + " (512 KiB): send smaller chunks";
    return reply;
  }
  if (put.total_size > limits_.max_artifact_bytes) {
    reply.error = "artifact " + put.digest + " is " + std::to_string(put.total_size) +
                  " bytes, more than the checkpointer takes (--max-artifact-bytes " +
                  std::to_string(limits_.max_artifact_bytes) +
                  "); leave data out of the working directory or raise the limit";
    return reply;
  }
  DropAbandonedUploads();
  const std::string upload_key = put.digest + "/" + put.upload_id;
  if (put.offset == 0) {
    if (std::string why = UploadRefusal(put, client, upload_key); !why.empty()) {
      reply.error = why;
      return reply;
    }
    // A first chunk starts the upload over, whatever an earlier attempt left.
    std::string hex = put.digest.substr(put.digest.find(':') + 1);
    std::string name = hex + "-" + std::to_string(std::hash<std::string>{}(put.upload_id));
    auto& upload = uploads_[upload_key];
    upload = Upload{staging_dir_ + "/" + name + kStagedSuffix, client, 0, put.total_size, 0};
  }
  auto it = uploads_.find(upload_key);
  if (it == uploads_.end() || it->second.received != put.offset ||
      it->second.total_size != put.total_size) {
    uint64_t received = it == uploads_.end() ? 0 : it->second.received;
    reply.error = "chunk of " + put.digest + " at offset " + std::to_string(put.offset) +
                  " does not continue the upload (" + std::to_string(received) +
                  " bytes received); start again from offset 0";
    reply.received = received;
    return reply;
  }
  Upload& upload = it->second;
  upload.last_chunk_ms = NowMs();
  if (upload.received + put.data.size() > upload.total_size) {
    reply.error = "chunk of " + put.digest + " goes past its total_size of " +
                  std::to_string(upload.total_size) + " bytes";
    std::filesystem::remove(upload.path);
    uploads_.erase(it);
    return reply;
  }
  std::ofstream out(upload.path, std::ios::binary | (put.offset == 0 ? std::ios::trunc
                                                                       : std::ios::app));
  out.write(reinterpret_cast<const char*>(put.data.data()),
            static_cast<std::streamsize>(put.data.size()));
  out.close();
  if (!out) {
    *failed = true;
    reply.error = "cannot write " + upload.path + " (is the disk full?); start again from offset 0";
    std::filesystem::remove(upload.path);
    uploads_.erase(it);
    return reply;
  }
  upload.received += put.data.size();
  reply.received = upload.received;
  if (upload.received < upload.total_size) return reply;

  // Complete: the bytes must be what the digest says before anyone may run them.
  std::string path = upload.path;
  uploads_.erase(it);
  auto digest = artifact::DigestFile(path);
  if (!digest.ok() || *digest != put.digest) {
    reply.error = digest.ok() ? "the uploaded bytes hash to " + *digest + ", not " + put.digest +
                                    "; upload again"
                              : digest.error();
  } else if (Status stored =
                 CallStore("put_blob", [&] { return store_.PutBlob(put.digest, path); });
             !stored.ok()) {
    *failed = true;
    reply.error = stored.message();
  } else {
    metrics_.Written(put.total_size);
    reply.stored = true;
    spdlog::info("stored {} ({} bytes) in {}", put.digest, put.total_size, store_.Describe());
  }
  std::filesystem::remove(path);
  return reply;
}

void Checkpointer::OnBlobPut(const bus::Message& message) {
  wire::BlobPutReplyT reply;
  auto request = DecodeOrRefuse<wire::BlobPut, wire::BlobPutReply>("blob_put", message);
  if (!request) return;
  bool failed = false;
  if (stopped_) {
    reply.error = kStopping;
  } else {
    reply = ReceiveChunk(request->value(), ClientOf(message.reply), &failed);
  }
  metrics_.SetUploads(uploads_.size());
  metrics_.Answered("blob_put", reply.error.empty() ? "ok" : failed ? "error" : "refused");
  if (!reply.error.empty()) spdlog::warn("blob put: {}", reply.error);
  Reply(message, wire::EncodeReply(codec_, *request, reply));
}

void Checkpointer::OnBlobGet(const bus::Message& message) {
  wire::BlobGetReplyT reply;
  auto request = DecodeOrRefuse<wire::BlobGet, wire::BlobGetReply>("blob_get", message);
  if (!request) return;
  const wire::BlobGetT& get = request->value();
  const char* outcome = "refused";
  if (stopped_) {
    reply.error = kStopping;
  } else if (auto size = CallStore("blob_size", [&] { return store_.BlobSize(get.digest); });
             !size.ok()) {
    reply.error = size.error();
    outcome = "error";
  } else if (size->has_value()) {
    reply.found = true;
    reply.total_size = **size;
    outcome = "ok";
    uint64_t length = get.length == 0 ? artifact::kChunkBytes
                                      : std::min<uint64_t>(get.length, artifact::kChunkBytes);
    if (get.offset < reply.total_size) {
      auto bytes =
          CallStore("read_blob", [&] { return store_.ReadBlob(get.digest, get.offset, length); });
      if (bytes.ok()) {
        metrics_.Read(bytes->size());
        reply.data.assign(bytes->begin(), bytes->end());
      } else {
        reply.error = bytes.error();
        outcome = "error";
      }
    }
  } else {
    outcome = "not_found";
  }
  metrics_.Answered("blob_get", outcome);
  Reply(message, wire::EncodeReply(codec_, *request, reply));
}

}  // namespace serve::checkpointer
