#include "wire/codec.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

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

Status VerifyFailure(const char* table, size_t size) {
  return Status::Error("not a valid " + std::string(ShortName(table)) + " message (" +
                       std::to_string(size) +
                       " bytes that are neither a verified Serve FlatBuffer with identifier "
                       "SRV1 nor a JSON object)");
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
  return std::string(reinterpret_cast<const char*>(parser.builder_.GetBufferPointer()),
                     parser.builder_.GetSize());
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
  if (bytes.size() >= 8 && std::memcmp(bytes.data() + 4, kFileIdentifier, 4) == 0) {
    return false;
  }
  for (char c : bytes) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    return c == '{';
  }
  return false;
}

}  // namespace serve::wire
