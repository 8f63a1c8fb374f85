#pragma once

// What an S3 (or GCS XML API) server answers, read by the S3 store: header lines, the
// Content-Length of a HEAD, and the few XML documents it needs (ListObjectsV2 pages, error
// bodies, a multipart upload's id). Every byte comes from the server and is treated as hostile:
// nothing here throws or reads past its input, whatever it is given (fuzz/s3_xml.cc).

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace serve::checkpointer::s3 {

// The text of the first <tag>...</tag> in an S3 XML document, unescaped; "" when absent.
std::string XmlText(std::string_view xml, std::string_view tag);

// The texts of every <tag>...</tag> in an S3 XML document, in order, unescaped.
std::vector<std::string> XmlTexts(std::string_view xml, std::string_view tag);

// One header line as curl hands it over ("Name: value\r\n"), added to `headers` under its
// lower-case name with the value trimmed. A status line ("HTTP/1.1 200 OK") starts a new
// response (after 100 Continue or a redirect) and clears `headers`; a line without ':' is
// ignored.
void AddHeaderLine(std::string_view line, std::map<std::string, std::string>* headers);

// A Content-Length value: decimal digits that fit 64 bits. The error says what was wrong with
// it; the caller names the request.
Result<uint64_t> ParseContentLength(std::string_view value);

// One page of a ListObjectsV2 answer.
struct ListObjectsPage {
  std::vector<std::string> keys;
  bool truncated = false;  // <IsTruncated>true</IsTruncated>: another page follows
  std::string next_token;  // <NextContinuationToken>, for the next page's request
};
ListObjectsPage ParseListObjectsPage(std::string_view xml);

}  // namespace serve::checkpointer::s3
