#pragma once

// Signing nats-server's nonce for nats.c, and connecting despite a flaw of nats.c before 3.10:
// it base64-encodes the signature with a function that takes a buffer whose first byte is zero
// for an empty one (nats-io/nats.c#705, fixed in 3.10.0). One ed25519 signature in 256 starts
// with a zero byte; nats.c then sends CONNECT without "sig", and nats-server refuses the user
// ("Authorization Violation"). Debian 12 ships nats.c 3.4.1.
//
// An ed25519 signature of a given nonce is fixed, so the only way past it is a new nonce: a new
// connection. SignNonceForNats withholds such a signature (the attempt fails, naming the cause),
// and ConnectNats connects again when that was why; nats.c's own reconnects simply try again.

#include <nats/nats.h>

#include "bus/nkeys.h"

namespace serve::bus {

// For a natsSignatureHandler: `key`'s signature of `nonce` in a malloc'd buffer, or NATS_ERR
// with `error_text` set (strdup'd) when it cannot be signed or nats.c would drop the signature.
natsStatus SignNonceForNats(const Nkey& key, const char* nonce, char** error_text,
                            unsigned char** signature, int* signature_length);

// natsConnection_Connect, repeated (a few times at most) while an attempt failed only because
// SignNonceForNats withheld a signature on this thread. With RetryOnFailedConnect, nats.c
// itself tries again in the background instead.
natsStatus ConnectNats(natsConnection** connection, natsOptions* options);

// Whether this process's nats.c would send `signature` as none.
bool NatsDropsSignature(const unsigned char* signature, int length);

// How many signatures SignNonceForNats has withheld on this thread.
int WithheldNonceSignaturesOnThisThread();

}  // namespace serve::bus
