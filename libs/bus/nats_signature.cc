#include "bus/nats_signature.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace serve::bus {
namespace {

// The nats.c release that sends every signature (nats_GetVersionNumber's encoding).
constexpr uint32_t kFirstFixedNatsVersion = 0x030A00;  // 3.10.0

// Signatures withheld on this thread: a synchronous connect signs on the thread that asked.
thread_local int withheld_signatures = 0;

}  // namespace

bool NatsDropsSignature(const unsigned char* signature, int length) {
  return length > 0 && signature[0] == 0 && nats_GetVersionNumber() < kFirstFixedNatsVersion;
}

int WithheldNonceSignaturesOnThisThread() { return withheld_signatures; }

natsStatus SignNonceForNats(const Nkey& key, const char* nonce, char** error_text,
                            unsigned char** signature, int* signature_length) {
  auto signed_nonce = key.Sign(nonce == nullptr ? "" : nonce);
  if (!signed_nonce.ok()) {
    *error_text = strdup(signed_nonce.error().c_str());
    return NATS_ERR;
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(signed_nonce->data());
  int size = static_cast<int>(signed_nonce->size());
  if (NatsDropsSignature(bytes, size)) {
    ++withheld_signatures;
    *error_text =
        strdup(("this nats.c (" + std::string(nats_GetVersion()) +
                ") would send the signature of this server's nonce as none, since it starts with a "
                "zero byte (fixed in nats.c 3.10); connecting again for a new nonce")
                   .c_str());
    return NATS_ERR;
  }
  *signature = static_cast<unsigned char*>(malloc(signed_nonce->size()));
  if (*signature == nullptr) return NATS_NO_MEMORY;
  memcpy(*signature, bytes, signed_nonce->size());
  *signature_length = size;
  return NATS_OK;
}

natsStatus ConnectNats(natsConnection** connection, natsOptions* options) {
  // Each attempt fails this way with odds of 1 in 256.
  constexpr int kMaxAttempts = 8;
  natsStatus s = NATS_OK;
  for (int attempt = 1;; ++attempt) {
    int withheld_before = withheld_signatures;
    s = natsConnection_Connect(connection, options);
    // NATS_NOT_YET_CONNECTED: nats.c goes on trying in the background (RetryOnFailedConnect),
    // or, when the attempt got as far as the handshake (a signature withheld, say), gives the
    // connection up, and Bus opens another (Bus::OnConnectionGivenUp).
    if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED || withheld_signatures == withheld_before ||
        attempt == kMaxAttempts) {
      return s;
    }
  }
}

}  // namespace serve::bus
