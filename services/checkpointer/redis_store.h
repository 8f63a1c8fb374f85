#pragma once

#include <memory>
#include <string>

#include "checkpointer/store.h"

namespace serve::checkpointer {

// `redis://[user:password@]host:port[/db][?prefix=name]`: records and blobs in one Redis
// database, through hiredis' synchronous API. `uri` is the whole --checkpoint-path.
//
//  - user and password are percent-decoded; `:password@` alone authenticates the default user
//    (requirepass), `user:password@` a Redis 6+ ACL user. host may be a name, an IPv4 address
//    or a bracketed IPv6 address; the port is required; db defaults to 0; prefix defaults to
//    "serve" and may use [A-Za-z0-9._:/-].
//  - Layout: record key K is the string `<prefix>:ckpt:K` holding the StoredCheckpoint
//    FlatBuffer (the bytes the file store writes), with its generation in decimal beside it in
//    `<prefix>:gen:K`. Blob "sha256:<hex>" is the string `<prefix>:blob:sha256:<hex>`; uploads
//    are assembled in `<prefix>:upload:<hex>:<random>` (expiring if abandoned) and renamed into
//    place.
//  - Fencing: a Lua script compares the generation key with the new generation and writes
//    record and generation together, so the check and the write are one atomic step in Redis
//    against every other writer. Before it runs, the record is read and verified: a corrupt one
//    is reported with its Redis key and never overwritten.
//  - Open checks the URI only; the server may be down (the checkpointer must start and retry).
//    Every call then fails with an error that names host:port and the cause, and the next call
//    connects again. Connect and command timeouts are 2 s.
//  - Durability is the server's: "survives a crash" holds as far as its persistence settings
//    (appendonly, appendfsync) make it hold. Redis Cluster is not supported.
//
// Used from one thread at a time (the checkpointer's loop).
Result<std::unique_ptr<CheckpointStore>> OpenRedisStore(const std::string& uri);

}  // namespace serve::checkpointer
