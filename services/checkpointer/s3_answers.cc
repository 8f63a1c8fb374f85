#include "checkpointer/s3_answers.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <utility>

namespace serve::checkpointer::s3 {
namespace {

std::string_view TrimWhiteSpace(std::string_view text) {
  size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return {};
  size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

std::string Lower(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower;
}

// XML's five predefined entities, replaced in one pass so that a replacement is never read
// again ("&amp;lt;" is "&lt;", not "<").
std::string Unescape(std::string_view text) {
  static const std::pair<std::string_view, char> kEntities[] = {
      {"&quot;", '"'}, {"&apos;", '\''}, {"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}};
  std::string out;
  out.reserve(text.size());
  for (size_t at = 0; at < text.size();) {
    bool replaced = false;
    if (text[at] == '&') {
      for (const auto& [entity, replacement] : kEntities) {
        if (text.substr(at, entity.size()) == entity) {
          out.push_back(replacement);
          at += entity.size();
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out.push_back(text[at++]);
  }
  return out;
}

}  // namespace

std::string XmlText(std::string_view xml, std::string_view tag) {
  std::string open = std::string("<").append(tag).append(">");
  size_t begin = xml.find(open);
  if (begin == std::string_view::npos) return "";
  begin += open.size();
  size_t end = xml.find(std::string("</").append(tag).append(">"), begin);
  if (end == std::string_view::npos) return "";
  return Unescape(xml.substr(begin, end - begin));
}

std::vector<std::string> XmlTexts(std::string_view xml, std::string_view tag) {
  std::vector<std::string> texts;
  const std::string open = std::string("<").append(tag).append(">");
  const std::string close = std::string("</").append(tag).append(">");
  for (size_t at = xml.find(open); at != std::string_view::npos; at = xml.find(open, at)) {
    size_t begin = at + open.size();
    size_t end = xml.find(close, begin);
    if (end == std::string_view::npos) break;
    texts.push_back(Unescape(xml.substr(begin, end - begin)));
    at = end + close.size();
  }
  return texts;
}

void AddHeaderLine(std::string_view line, std::map<std::string, std::string>* headers) {
  if (line.rfind("HTTP/", 0) == 0) {
    headers->clear();
  } else if (size_t colon = line.find(':'); colon != std::string_view::npos) {
    (*headers)[Lower(TrimWhiteSpace(line.substr(0, colon)))] =
        std::string(TrimWhiteSpace(line.substr(colon + 1)));
  }
}

Result<uint64_t> ParseContentLength(std::string_view value) {
  if (value.empty()) return Status::Error("no Content-Length");
  uint64_t length = 0;
  for (char c : value) {
    if (c < '0' || c > '9') {
      return Status::Error("a Content-Length that is not a number: '" +
                           std::string(value.substr(0, 64)) + "'");
    }
    auto digit = static_cast<uint64_t>(c - '0');
    if (length > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
      return Status::Error("a Content-Length too large for 64 bits: '" +
                           std::string(value.substr(0, 64)) + "'");
    }
    length = length * 10 + digit;
  }
  return length;
}

ListObjectsPage ParseListObjectsPage(std::string_view xml) {
  ListObjectsPage page;
  page.keys = XmlTexts(xml, "Key");
  page.truncated = XmlText(xml, "IsTruncated") == "true";
  page.next_token = XmlText(xml, "NextContinuationToken");
  return page;
}

}  // namespace serve::checkpointer::s3
