#include "bus/nkeys.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <memory>

namespace serve::bus {
namespace {

// The first byte of an encoded key: its type, in the top five bits (nkeys' prefix bytes).
constexpr unsigned char kSeedPrefix = 18 << 3;  // 'S'

unsigned char PrefixOf(NkeyType type) {
  switch (type) {
    case NkeyType::kOperator:
      return 14 << 3;  // 'O'
    case NkeyType::kAccount:
      return 0;  // 'A'
    case NkeyType::kUser:
      return 20 << 3;  // 'U'
  }
  return 0;
}

const char* TypeName(NkeyType type) {
  switch (type) {
    case NkeyType::kOperator:
      return "operator";
    case NkeyType::kAccount:
      return "account";
    case NkeyType::kUser:
      return "user";
  }
  return "unknown";
}

std::string WithCrc(std::string raw) {
  uint16_t crc = NkeyCrc16(raw);
  raw.push_back(static_cast<char>(crc & 0xff));
  raw.push_back(static_cast<char>(crc >> 8));
  return raw;
}

struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

}  // namespace

uint16_t NkeyCrc16(std::string_view bytes) {
  uint16_t crc = 0;
  for (char c : bytes) {
    crc ^= static_cast<uint16_t>(static_cast<unsigned char>(c) << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<uint16_t>(crc << 1);
    }
  }
  return crc;
}

namespace {

constexpr char kBase32Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
constexpr char kBase64UrlAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Bytes as digits of kBits bits each from `alphabet`, without padding: nkeys are base32 (5 bits),
// JWT parts base64url (6 bits).
template <int kBits>
std::string EncodeDigits(std::string_view bytes, const char* alphabet) {
  constexpr uint32_t kMask = (1u << kBits) - 1;
  std::string out;
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : bytes) {
    buffer = (buffer << 8) | static_cast<unsigned char>(c);
    bits += 8;
    while (bits >= kBits) {
      out.push_back(alphabet[(buffer >> (bits - kBits)) & kMask]);
      bits -= kBits;
    }
  }
  if (bits > 0) out.push_back(alphabet[(buffer << (kBits - bits)) & kMask]);
  return out;
}

template <int kBits>
Result<std::string> DecodeDigits(std::string_view text, std::string_view alphabet,
                                 const char* name) {
  std::string out;
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    size_t value = alphabet.find(c);
    if (value == std::string_view::npos) {
      return Status::Error(std::string("'").append(1, c).append("' is not a ").append(name).append(
          " character"));
    }
    buffer = (buffer << kBits) | static_cast<uint32_t>(value);
    bits += kBits;
    if (bits >= 8) {
      out.push_back(static_cast<char>((buffer >> (bits - 8)) & 0xff));
      bits -= 8;
    }
  }
  return out;
}

}  // namespace

std::string Base32Encode(std::string_view bytes) {
  return EncodeDigits<5>(bytes, kBase32Alphabet);
}

Result<std::string> Base32Decode(std::string_view text) {
  return DecodeDigits<5>(text, kBase32Alphabet, "base32");
}

std::string Base64UrlEncode(std::string_view bytes) {
  return EncodeDigits<6>(bytes, kBase64UrlAlphabet);
}

Result<std::string> Base64UrlDecode(std::string_view text) {
  return DecodeDigits<6>(text, kBase64UrlAlphabet, "base64url");
}

Result<Nkey> Nkey::Generate(NkeyType type) {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) {
    return Status::Error("cannot make an nkey: the system's random source failed");
  }
  return FromRawSeed(std::string(reinterpret_cast<char*>(raw), sizeof raw), type);
}

Result<Nkey> Nkey::FromSeed(std::string_view seed, NkeyType expected) {
  std::string what = std::string("the ") + TypeName(expected) + " nkey seed";
  auto raw = Base32Decode(seed);
  if (!raw.ok() || raw->size() != 36) {
    return Status::Error(what + " is not an nkey seed (58 base32 characters starting with 'S')");
  }
  std::string_view body(raw->data(), 34);
  uint16_t crc = static_cast<uint16_t>(static_cast<unsigned char>((*raw)[34]) |
                                       (static_cast<unsigned char>((*raw)[35]) << 8));
  if (NkeyCrc16(body) != crc) return Status::Error(what + " fails its checksum (mistyped?)");
  unsigned char b1 = static_cast<unsigned char>(body[0]);
  unsigned char b2 = static_cast<unsigned char>(body[1]);
  if ((b1 & 0xf8) != kSeedPrefix) {
    return Status::Error(what + " is not a seed: it does not start with 'S'");
  }
  unsigned char prefix = static_cast<unsigned char>(((b1 & 7) << 5) | ((b2 & 0xf8) >> 3));
  if (prefix != PrefixOf(expected)) {
    return Status::Error(what + " is the seed of another kind of key; give a " +
                         TypeName(expected) + " seed");
  }
  return FromRawSeed(std::string(body.substr(2)), expected);
}

Result<Nkey> Nkey::FromRawSeed(std::string raw_seed, NkeyType type) {
  PkeyPtr key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr,
                                           reinterpret_cast<const unsigned char*>(raw_seed.data()),
                                           raw_seed.size()));
  unsigned char public_raw[32];
  size_t public_size = sizeof public_raw;
  if (!key || EVP_PKEY_get_raw_public_key(key.get(), public_raw, &public_size) != 1 ||
      public_size != sizeof public_raw) {
    return Status::Error("cannot make an ed25519 key (OpenSSL without ed25519?)");
  }
  Nkey out;
  out.type_ = type;
  unsigned char prefix = PrefixOf(type);
  std::string encoded_seed;
  encoded_seed.push_back(static_cast<char>(kSeedPrefix | (prefix >> 5)));
  encoded_seed.push_back(static_cast<char>((prefix & 31) << 3));
  encoded_seed.append(raw_seed);
  out.seed_ = Base32Encode(WithCrc(encoded_seed));
  std::string encoded_public(1, static_cast<char>(prefix));
  encoded_public.append(reinterpret_cast<char*>(public_raw), public_size);
  out.public_key_ = Base32Encode(WithCrc(encoded_public));
  out.raw_seed_ = std::move(raw_seed);
  return out;
}

Result<std::string> Nkey::Sign(std::string_view data) const {
  PkeyPtr key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr,
                                           reinterpret_cast<const unsigned char*>(raw_seed_.data()),
                                           raw_seed_.size()));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  unsigned char signature[64];
  size_t size = sizeof signature;
  if (!key || !ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), signature, &size,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return Status::Error("cannot sign with an ed25519 key");
  }
  return std::string(reinterpret_cast<char*>(signature), size);
}

bool VerifyNkeySignature(std::string_view public_key, std::string_view data,
                         std::string_view signature) {
  auto raw = Base32Decode(public_key);
  if (!raw.ok() || raw->size() != 35) return false;
  uint16_t crc = static_cast<uint16_t>(static_cast<unsigned char>((*raw)[33]) |
                                       (static_cast<unsigned char>((*raw)[34]) << 8));
  if (NkeyCrc16(std::string_view(raw->data(), 33)) != crc) return false;
  PkeyPtr key(EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(raw->data() + 1), 32));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!key || !ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) {
    return false;
  }
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(data.data()),
                          data.size()) == 1;
}

}  // namespace serve::bus
