#pragma once

// NATS nkeys: ed25519 key pairs written the way NATS tools write them (base32 of a type prefix,
// the key and a CRC16). Public keys start with a letter saying what they identify (O operator,
// A account, U user); seeds (private keys) with "S" and that letter. Serve makes its own
// operator, account and user keys for the bus's operator mode (bus/jwt.h).

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace serve::bus {

enum class NkeyType { kOperator, kAccount, kUser };

class Nkey {
 public:
  // A fresh key pair from the system's random source.
  static Result<Nkey> Generate(NkeyType type);
  // Reads an encoded seed ("SO...", "SA...", "SU..."): refused, naming the cause, when it is
  // not a seed, fails its checksum, or is of another type than `expected`.
  static Result<Nkey> FromSeed(std::string_view seed, NkeyType expected);

  NkeyType type() const { return type_; }
  // The encoded public key ("O...", "A...", "U...": 56 characters).
  const std::string& public_key() const { return public_key_; }
  // The encoded seed (58 characters): the secret.
  const std::string& seed() const { return seed_; }
  // The 64-byte ed25519 signature of `data`.
  Result<std::string> Sign(std::string_view data) const;

 private:
  Nkey() = default;
  static Result<Nkey> FromRawSeed(std::string raw_seed, NkeyType type);
  NkeyType type_ = NkeyType::kUser;
  std::string raw_seed_;  // 32 bytes
  std::string public_key_;
  std::string seed_;
};

// Whether `signature` is `public_key`'s (an encoded public key) signature of `data`.
bool VerifyNkeySignature(std::string_view public_key, std::string_view data,
                         std::string_view signature);

// RFC 4648 base32 without padding, as nkeys and JWT ids use it.
std::string Base32Encode(std::string_view bytes);
// Unpadded base32 back to bytes; refused when a character is not base32.
Result<std::string> Base32Decode(std::string_view text);
// The CRC-16/XMODEM of `bytes` (polynomial 0x1021, initial 0), as nkeys append it.
uint16_t NkeyCrc16(std::string_view bytes);
// Base64 URL-safe without padding, as JWTs are written.
std::string Base64UrlEncode(std::string_view bytes);
Result<std::string> Base64UrlDecode(std::string_view text);

}  // namespace serve::bus
