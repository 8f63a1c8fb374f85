#include "wire/codec.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>

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

JsonCodec::JsonCodec() : printer_(JsonOptions()) { LoadSchema(printer_); }

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
  if (!parser.Parse(text.c_str())) {
    return Status::Error("invalid JSON for " + std::string(short_name) + ": " +
                         CleanParserError(parser.error_) + SnippetAt(CleanParserError(parser.error_), json) +
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
