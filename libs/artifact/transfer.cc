#include "artifact/transfer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "artifact/artifact.h"
#include "wire/codec.h"

namespace serve::artifact {
namespace {

// Sends `request` and decodes the reply as `Reply`; a missing checkpointer or an error in the
// reply becomes a Status that says which.
template <typename Reply, typename RequestT>
Result<typename Reply::NativeTableType> Call(uv_loop_t* loop, bus::Bus& bus,
                                             const std::string& subject,
                                             const RequestT& request, double timeout_s) {
  auto message = bus::RequestAndWait(loop, bus, subject, wire::Pack(request), timeout_s);
  if (!message.ok()) {
    if (message.error().rfind("nothing listens", 0) == 0) {
      return Status::Error("no checkpointer answers on " + subject +
                           "; start Serve with `serve start` (it runs one)");
    }
    return Status::Error("checkpointer on " + subject + ": " + message.error());
  }
  auto reply = wire::Unpack<Reply>(message->data);
  if (!reply.ok()) return Status::Error("checkpointer sent an unreadable reply: " + reply.error());
  if (!reply->error.empty()) return Status::Error(reply->error);
  return std::move(*reply);
}

}  // namespace

Result<UploadOutcome> Upload(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                             const std::string& path, const std::string& digest,
                             double timeout_s) {
  std::error_code ec;
  uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return Status::Error("cannot read " + path + ": " + ec.message());

  wire::BlobStatT stat;
  stat.digest = digest;
  auto found = Call<wire::BlobStatReply>(loop, bus, subjects.ckpt_blob_stat, stat, timeout_s);
  if (!found.ok()) return found.status();
  if (found->found && found->size == size) return UploadOutcome{false, size};

  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot read " + path + ": " + std::strerror(errno));
  wire::BlobPutT put;
  put.digest = digest;
  put.total_size = size;
  put.upload_id = std::to_string(std::random_device{}()) + "-" + std::to_string(getpid());
  std::vector<char> buffer(kChunkBytes);
  uint64_t offset = 0;
  do {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    auto n = static_cast<size_t>(in.gcount());
    if (n == 0 && offset < size) {
      return Status::Error(path + " shrank while it was being uploaded; deploy again");
    }
    put.offset = offset;
    put.data.assign(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(n));
    auto reply = Call<wire::BlobPutReply>(loop, bus, subjects.ckpt_blob_put, put, timeout_s);
    if (!reply.ok()) return Status::Error("uploading " + path + ": " + reply.error());
    offset += n;
    if (offset >= size && !reply->stored) {
      return Status::Error("uploading " + path + ": the checkpointer did not store it");
    }
  } while (offset < size);
  return UploadOutcome{true, size};
}

Status Fetch(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
             const std::string& digest, const std::string& name, const std::string& path,
             double timeout_s) {
  const std::string what = name.empty() ? digest : name + " (" + digest + ")";
  std::string partial = path + ".partial-" + std::to_string(getpid());
  std::ofstream out(partial, std::ios::binary | std::ios::trunc);
  if (!out) return Status::Error("cannot write " + partial + ": " + std::strerror(errno));
  Sha256 sha;
  wire::BlobGetT get;
  get.digest = digest;
  get.length = kChunkBytes;
  uint64_t total = 0;
  do {
    auto reply = Call<wire::BlobGetReply>(loop, bus, subjects.ckpt_blob_get, get, timeout_s);
    if (!reply.ok()) {
      std::filesystem::remove(partial);
      return Status::Error("cannot fetch " + what + ": " + reply.error());
    }
    if (!reply->found) {
      std::filesystem::remove(partial);
      return Status::Error(what + " is not in the checkpoint store; `serve deploy FILE` uploads "
                                  "the code a deployment names");
    }
    total = reply->total_size;
    if (reply->data.empty() && get.offset < total) {
      std::filesystem::remove(partial);
      return Status::Error("cannot fetch " + what + ": the store sent no bytes at offset " +
                           std::to_string(get.offset));
    }
    std::string_view chunk(reinterpret_cast<const char*>(reply->data.data()), reply->data.size());
    sha.Update(chunk);
    out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    get.offset += chunk.size();
  } while (get.offset < total);
  out.close();
  if (!out) {
    std::filesystem::remove(partial);
    return Status::Error("cannot write " + partial + ": " + std::strerror(errno));
  }
  std::string got = sha.Digest();
  if (got != digest) {
    std::filesystem::remove(partial);
    return Status::Error("fetched " + what + " but its bytes hash to " + got +
                         "; the stored copy is damaged: deploy the code again");
  }
  std::error_code ec;
  std::filesystem::rename(partial, path, ec);
  if (ec) {
    std::filesystem::remove(partial);
    return Status::Error("cannot move " + partial + " to " + path + ": " + ec.message());
  }
  return Status::Ok();
}

}  // namespace serve::artifact
