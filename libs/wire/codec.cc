#include "wire/codec.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "wire/schema_text.h"

namespace serve::wire {
namespace {

// The schema is part of the binary, so failing to parse it is a build defect, not input.
void LoadSchema(flatbuffers::Parser& parser) {
  if (!parser.Parse(kSchemaText)) {
    fprintf(stderr, "internal error: embedded schema does not parse: %s\n",
            parser.error_.c_str());
    abort();
  }
}

flatbuffers::IDLOptions JsonOptions() {
  flatbuffers::IDLOptions options;
  options.strict_json = true;
  options.indent_step = -1;  // one line
  options.output_default_scalars_in_json = true;
  options.output_enum_identifiers = true;
  return options;
}

// flatbuffers::Parser errors read "error: 1: 9: error: unknown field: nme"; keep the useful tail.
std::string CleanParserError(const std::string& error) {
  std::string text = error;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  const std::string prefix = "error: ";
  if (text.rfind(prefix, 0) == 0) text.erase(0, prefix.size());
  return text;
}

// The parser reports "LINE: COLUMN: error: ..." with messages that do not always name the
// field; quoting the input just before that position shows the person where to look.
std::string SnippetAt(const std::string& error, std::string_view json) {
  unsigned line = 0, column = 0;
  if (sscanf(error.c_str(), "%u: %u:", &line, &column) != 2 || line == 0) return "";
  size_t offset = 0;
  for (unsigned current = 1; current < line && offset < json.size(); ++offset) {
    if (json[offset] == '\n') ++current;
  }
  offset = std::min(json.size(), offset + column);
  size_t start = offset > 40 ? offset - 40 : 0;
  std::string snippet(json.substr(start, offset - start));
  for (char& c : snippet) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return " near '" + std::string(start > 0 ? "..." : "") + snippet + "'";
}

bool IsBytes(const flatbuffers::Type& type) {
  return type.base_type == flatbuffers::BASE_TYPE_VECTOR &&
         type.element == flatbuffers::BASE_TYPE_UCHAR;
}

// The table a field holds (alone or in a vector); null for any other field.
const flatbuffers::StructDef* HeldTable(const flatbuffers::Type& type) {
  bool table = type.base_type == flatbuffers::BASE_TYPE_STRUCT ||
               (type.base_type == flatbuffers::BASE_TYPE_VECTOR &&
                type.element == flatbuffers::BASE_TYPE_STRUCT);
  return table && type.struct_def != nullptr && !type.struct_def->fixed ? type.struct_def : nullptr;
}

// Replaces the base64 strings of [ubyte] fields in `object`, a JSON table of `table`, with the
// arrays of numbers flatbuffers::Parser reads. Leaves anything else for the parser to judge.
Status BytesFromBase64(nlohmann::json& object, const flatbuffers::StructDef& table,
                       const std::string& path) {
  if (!object.is_object()) return Status::Ok();
  for (const flatbuffers::FieldDef* field : table.fields.vec) {
    auto it = object.find(field->name);
    if (it == object.end()) continue;
    std::string where = path.empty() ? field->name : path + "." + field->name;
    if (IsBytes(field->value.type)) {
      if (!it->is_string()) continue;
      auto bytes = Base64Decode(it->get_ref<const std::string&>());
      if (!bytes.ok()) {
        return Status::Error("field " + where +
                             " is neither base64 nor an array of numbers: " + bytes.error());
      }
      nlohmann::json numbers = nlohmann::json::array();
      for (char c : *bytes) numbers.push_back(static_cast<unsigned char>(c));
      *it = std::move(numbers);
    } else if (const flatbuffers::StructDef* held = HeldTable(field->value.type)) {
      if (it->is_array()) {
        for (size_t i = 0; i < it->size(); ++i) {
          Status status = BytesFromBase64((*it)[i], *held, where + "[" + std::to_string(i) + "]");
          if (!status.ok()) return status;
        }
      } else {
        Status status = BytesFromBase64(*it, *held, where);
        if (!status.ok()) return status;
      }
    }
  }
  return Status::Ok();
}

// Replaces the arrays of numbers flatbuffers::GenerateText writes for [ubyte] fields in
// `object`, a JSON table of `table`, with base64 strings.
void BytesToBase64(nlohmann::json& object, const flatbuffers::StructDef& table) {
  if (!object.is_object()) return;
  for (const flatbuffers::FieldDef* field : table.fields.vec) {
    auto it = object.find(field->name);
    if (it == object.end()) continue;
    if (IsBytes(field->value.type)) {
      if (!it->is_array()) continue;
      std::string bytes;
      bytes.reserve(it->size());
      for (const auto& number : *it) {
        bytes.push_back(static_cast<char>(number.get<unsigned>()));
      }
      *it = Base64Encode(bytes);
    } else if (const flatbuffers::StructDef* held = HeldTable(field->value.type)) {
      if (it->is_array()) {
        for (auto& element : *it) BytesToBase64(element, *held);
      } else {
        BytesToBase64(*it, *held);
      }
    }
  }
}

// How deeply `json` nests arrays and objects, strings skipped. nlohmann::json prints (and our
// walks descend) recursively: hostile text nested a million deep must never reach them.
size_t Nesting(std::string_view json) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// Deeper than any table of the schema nests; flatbuffers::Parser refuses such text on its own.
constexpr size_t kMaxNesting = 64;

// Compact JSON; strings that are not UTF-8 (a FlatBuffer string may hold any bytes) get U+FFFD.
std::string Dump(const nlohmann::json& json) {
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}
}  // namespace

std::string_view ShortName(const char* fully_qualified_name) {
  std::string_view name(fully_qualified_name);
  auto dot = name.rfind('.');
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

namespace {

// Each table's wire_id, read once from the schema compiled into the binary.
class Identifiers {
 public:
  static const Identifiers& Get() {
    static const Identifiers identifiers;
    return identifiers;
  }
  const char* Of(const std::string& table) const {
    auto it = by_table_.find(table);
    return it == by_table_.end() ? nullptr : it->second.c_str();
  }
  // The table whose identifier `id` (4 bytes) is; null when none.
  const std::string* TableOf(std::string_view id) const {
    auto it = by_id_.find(std::string(id));
    return it == by_id_.end() ? nullptr : &it->second;
  }

 private:
  Identifiers() {
    flatbuffers::Parser parser;
    LoadSchema(parser);
    for (const flatbuffers::StructDef* table : parser.structs_.vec) {
      std::string name = table->defined_namespace->GetFullyQualifiedName(table->name);
      if (const flatbuffers::Value* id = table->attributes.Lookup("wire_id")) {
        by_table_[name] = id->constant;
        by_id_[id->constant] = name;
      }
    }
  }
  std::map<std::string, std::string> by_table_;
  std::map<std::string, std::string> by_id_;
};

}  // namespace

const char* IdentifierOf(const char* fully_qualified_name) {
  const char* id = Identifiers::Get().Of(fully_qualified_name);
  if (id == nullptr) {
    fprintf(stderr, "internal error: table %s has no wire_id in schemas/serve.fbs\n",
            fully_qualified_name);
    abort();
  }
  return id;
}

bool HasServeIdentifier(std::string_view bytes) {
  if (bytes.size() < 8) return false;
  std::string_view id = bytes.substr(4, 4);
  return id == kLegacyIdentifier || Identifiers::Get().TableOf(id) != nullptr;
}

Status VerifyFailure(const char* table, std::string_view bytes) {
  std::string name(ShortName(table));
  std::string other;
  if (bytes.size() >= 8) {
    if (const std::string* carried = Identifiers::Get().TableOf(bytes.substr(4, 4))) {
      if (*carried != table) {
        other = "; they are a " + std::string(ShortName(carried->c_str())) + ", sent where a " +
                name + " is expected";
      }
    }
  }
  return Status::Error("not a valid " + name + " message (" + std::to_string(bytes.size()) +
                       " bytes that are neither a verified Serve FlatBuffer with identifier " +
                       IdentifierOf(table) + " nor a JSON object" + other + ")");
}

std::string Base64Encode(std::string_view bytes) {
  std::string text(4 * ((bytes.size() + 2) / 3), '\0');
  if (bytes.empty()) return text;
  int written = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(text.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  text.resize(written > 0 ? static_cast<size_t>(written) : 0);
  return text;
}

Result<std::string> Base64Decode(std::string_view text) {
  // EVP_DecodeBlock reads the padded standard alphabet and skips white space; url-safe and
  // unpadded text is brought to that form, and anything else refused here with its position.
  std::string standard;
  standard.reserve(text.size() + 2);
  size_t padding = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '=') {
      ++padding;
      continue;
    }
    bool alphabet = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '+' || c == '/' || c == '-' || c == '_';
    if (!alphabet) {
      return Status::Error("character " + std::to_string(i) + " is not in the base64 alphabet " +
                           "(A-Z a-z 0-9 + / or url-safe - _, then = padding)");
    }
    if (padding > 0) return Status::Error("'=' padding is only allowed at the end");
    standard.push_back(c == '-' ? '+' : c == '_' ? '/' : c);
  }
  size_t unpadded = standard.size();
  if (unpadded % 4 == 1) {
    return Status::Error(std::to_string(unpadded) +
                         " base64 characters, which no number of bytes encodes (one too many "
                         "or missing)");
  }
  size_t needed = (4 - unpadded % 4) % 4;
  if (padding != 0 && padding != needed) {
    return Status::Error(std::to_string(padding) + " '=' where " + std::to_string(needed) +
                         " belong");
  }
  standard.append(needed, '=');
  std::string bytes(standard.size() / 4 * 3, '\0');
  if (standard.empty()) return bytes;
  int decoded = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(bytes.data()),
                                reinterpret_cast<const unsigned char*>(standard.data()),
                                static_cast<int>(standard.size()));
  if (decoded < 0) return Status::Error("not valid base64");
  // EVP_DecodeBlock counts the bytes the padding stands for as zeros.
  bytes.resize(static_cast<size_t>(decoded) - needed);
  return bytes;
}

JsonCodec::JsonCodec() : printer_(JsonOptions()) {
  LoadSchema(printer_);
  // A table holds bytes when it has a [ubyte] field or holds such a table: repeat until no
  // table is added, which also settles tables that hold each other.
  for (bool added = true; added;) {
    added = false;
    for (const flatbuffers::StructDef* table : printer_.structs_.vec) {
      if (table->fixed || HoldsBytes(table)) continue;
      for (const flatbuffers::FieldDef* field : table->fields.vec) {
        const flatbuffers::StructDef* held = HeldTable(field->value.type);
        if (IsBytes(field->value.type) || (held != nullptr && HoldsBytes(held))) {
          holding_bytes_.insert(table);
          added = true;
          break;
        }
      }
    }
  }
}

Result<std::string> JsonCodec::FromJson(std::string_view json, const char* table) {
  // A fresh parser per message: flatbuffers::Parser keeps state after a failed parse, and
  // control-plane messages are rare enough that the schema parse does not matter.
  flatbuffers::Parser parser(JsonOptions());
  LoadSchema(parser);
  std::string_view short_name = ShortName(table);
  if (!parser.SetRootType(table)) {
    return Status::Error("internal error: no table " + std::string(table) + " in the schema");
  }
  std::string text(json);  // the parser wants a NUL-terminated string
  const flatbuffers::StructDef* root = printer_.structs_.Lookup(table);
  if (root != nullptr && HoldsBytes(root) && Nesting(json) <= kMaxNesting) {
    // flatbuffers::Parser reads [ubyte] only as arrays of numbers. Text that is not JSON at all
    // goes to the parser as it came, whose error says where.
    nlohmann::json document = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
    if (!document.is_discarded()) {
      Status converted = BytesFromBase64(document, *root, "");
      if (!converted.ok()) {
        return Status::Error("invalid JSON for " + std::string(short_name) + ": " +
                             converted.message() + " (docs/protocol.md, JSON on the bus)");
      }
      text = Dump(document);
    }
  }
  if (!parser.Parse(text.c_str())) {
    std::string error = CleanParserError(parser.error_);
    return Status::Error("invalid JSON for " + std::string(short_name) + ": " + error +
                         SnippetAt(error, text) +
                         " (fields are listed in schemas/serve.fbs and docs/protocol.md)");
  }
  // The parser finished with the schema's file_identifier; the table's own goes in its place.
  std::string bytes(reinterpret_cast<const char*>(parser.builder_.GetBufferPointer()),
                    parser.builder_.GetSize());
  if (bytes.size() >= 8) bytes.replace(4, 4, IdentifierOf(table), 4);
  return bytes;
}

Result<std::string> JsonCodec::ToJson(std::string_view bytes, const char* table) {
  if (!printer_.SetRootType(table)) {
    return Status::Error("internal error: no table " + std::string(table) + " in the schema");
  }
  std::string json;
  if (!flatbuffers::GenerateText(printer_, bytes.data(), &json)) {
    return Status::Error("cannot print " + std::string(ShortName(table)) + " as JSON");
  }
  while (!json.empty() && (json.back() == '\n' || json.back() == ' ')) json.pop_back();
  const flatbuffers::StructDef* root = printer_.structs_.Lookup(table);
  if (root != nullptr && HoldsBytes(root)) {
    nlohmann::json document = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
    if (document.is_discarded()) {
      // GenerateText writes a string that is not UTF-8 as \x escapes, which JSON lacks.
      return Status::Error("cannot print " + std::string(ShortName(table)) +
                           " as JSON: a string in it is not UTF-8");
    }
    BytesToBase64(document, *root);
    json = Dump(document);
  }
  return json;
}

bool LooksLikeJson(std::string_view bytes) {
  if (HasServeIdentifier(bytes)) return false;
  for (char c : bytes) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    return c == '{';
  }
  return false;
}

}  // namespace serve::wire
