#include "common/tokenizer/utf8.h"

namespace hearth::tokenizer::utf8 {
namespace {

// Allowed range of the second byte for a given lead byte (Unicode Table 3-7);
// later continuation bytes are always 80..BF. Returns false for invalid leads.
bool LeadInfo(uint8_t lead, size_t* length, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead < 0x80) {
    *length = 1;
  } else if (lead < 0xC2) {
    return false;  // continuation byte or overlong 2-byte lead
  } else if (lead < 0xE0) {
    *length = 2;
  } else if (lead < 0xF0) {
    *length = 3;
    if (lead == 0xE0) *lo = 0xA0;  // overlong
    if (lead == 0xED) *hi = 0x9F;  // surrogates
  } else if (lead < 0xF5) {
    *length = 4;
    if (lead == 0xF0) *lo = 0x90;  // overlong
    if (lead == 0xF4) *hi = 0x8F;  // > U+10FFFF
  } else {
    return false;
  }
  return true;
}

// Number of bytes of the sequence at s[pos] that are valid so far (at least 1
// when the lead is valid), and whether the sequence is complete.
size_t ValidPrefix(std::string_view s, size_t pos, bool* complete) {
  size_t length;
  uint8_t lo, hi;
  *complete = false;
  if (!LeadInfo(static_cast<uint8_t>(s[pos]), &length, &lo, &hi)) return 0;
  size_t i = 1;
  for (; i < length; ++i) {
    if (pos + i >= s.size()) return i;
    uint8_t b = static_cast<uint8_t>(s[pos + i]);
    if (b < lo || b > hi) return i;
    lo = 0x80;
    hi = 0xBF;
  }
  *complete = true;
  return length;
}

}  // namespace

size_t SequenceLength(std::string_view s, size_t pos) {
  bool complete;
  size_t n = ValidPrefix(s, pos, &complete);
  return complete ? n : 0;
}

size_t FindInvalid(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    // ASCII fast path: most text is ASCII.
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t n = SequenceLength(s, pos);
    if (n == 0) return pos;
    pos += n;
  }
  return std::string_view::npos;
}

std::string DecodeLossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool complete;
    size_t n = ValidPrefix(bytes, pos, &complete);
    if (complete) {
      out.append(bytes.data() + pos, n);
      pos += n;
    } else {
      // One replacement per maximal subpart; a bad lead byte is its own
      // subpart.
      Append(kReplacementChar, &out);
      pos += n == 0 ? 1 : n;
    }
  }
  return out;
}

char32_t DecodeAt(std::string_view s, size_t pos, size_t* len) {
  uint8_t b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  if (b0 < 0xE0) {
    *len = 2;
    return ((b0 & 0x1F) << 6) | (s[pos + 1] & 0x3F);
  }
  if (b0 < 0xF0) {
    *len = 3;
    return ((b0 & 0x0F) << 12) | ((s[pos + 1] & 0x3F) << 6) |
           (s[pos + 2] & 0x3F);
  }
  *len = 4;
  return ((b0 & 0x07) << 18) | ((s[pos + 1] & 0x3F) << 12) |
         ((s[pos + 2] & 0x3F) << 6) | (s[pos + 3] & 0x3F);
}

void Append(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsWhitespace(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

}  // namespace hearth::tokenizer::utf8
