// The S3 store's reading of what an object store answers (services/checkpointer/s3_answers.h):
// header lines as curl hands them over, Content-Length values, ListObjectsV2 pages and error
// documents.
//
// Input: header lines up to the first empty line ("\r\n\r\n" or "\n\n"), then the XML body.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "checkpointer/s3_answers.h"

namespace s3 = serve::checkpointer::s3;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view head = input;
  std::string_view body;
  for (std::string_view blank : {"\r\n\r\n", "\n\n"}) {
    if (size_t at = input.find(blank); at != std::string_view::npos) {
      head = input.substr(0, at);
      body = input.substr(at + blank.size());
      break;
    }
  }

  // curl hands over one line at a time, each with its line end.
  std::map<std::string, std::string> headers;
  while (!head.empty()) {
    size_t end = head.find('\n');
    size_t length = end == std::string_view::npos ? head.size() : end + 1;
    s3::AddHeaderLine(head.substr(0, length), &headers);
    head.remove_prefix(length);
  }
  for (const auto& [name, value] : headers) {
    auto length = s3::ParseContentLength(value);
    // A length is all digits; anything else is an error, never a number.
    if (length.ok() && value.find_first_not_of("0123456789") != std::string::npos) abort();
    (void)name;
  }
  (void)s3::ParseContentLength(body);

  s3::ListObjectsPage page = s3::ParseListObjectsPage(body);
  size_t key_bytes = 0;
  for (const std::string& key : page.keys) key_bytes += key.size();
  // Unescaping only ever shortens the text.
  if (key_bytes > body.size() || page.next_token.size() > body.size()) abort();
  for (const char* tag : {"Code", "Message", "UploadId", "ETag"}) {
    if (s3::XmlText(body, tag).size() > body.size()) abort();
  }
  return 0;
}
