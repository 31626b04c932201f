// UTF-8 helpers shared by the tokenizers.
//
// Tokenizers see two kinds of byte strings: user text, which must be valid
// UTF-8 before it reaches a regex or a vocabulary, and byte sequences rebuilt
// from byte-level / byte-fallback tokens, which may stop in the middle of a
// character (a streamed token, a model that emits a stray continuation byte).
// The first are validated and rejected with an offset; the second are decoded
// lossily, one U+FFFD per maximal invalid subpart, exactly as Rust's
// String::from_utf8_lossy and the WHATWG TextDecoder do, so that hearth's
// output matches Hugging Face's.
#ifndef HEARTH_COMMON_TOKENIZER_UTF8_H_
#define HEARTH_COMMON_TOKENIZER_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace hearth::tokenizer::utf8 {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Length in bytes of the well-formed UTF-8 sequence starting at s[pos], or 0 if
// the bytes there are not one (bad lead byte, bad or missing continuation,
// overlong form, surrogate, > U+10FFFF). `pos` must be < s.size().
size_t SequenceLength(std::string_view s, size_t pos);

// Byte offset of the first ill-formed sequence in `s`, or
// std::string_view::npos when all of `s` is well-formed UTF-8.
size_t FindInvalid(std::string_view s);

// Decodes arbitrary bytes into valid UTF-8, replacing each maximal ill-formed
// subpart with U+FFFD.
std::string DecodeLossy(std::string_view bytes);

// Decodes the code point of the well-formed sequence at s[pos] (caller checked
// it with SequenceLength) and stores its byte length in *len.
char32_t DecodeAt(std::string_view s, size_t pos, size_t* len);

// Appends the UTF-8 encoding of `cp` (must be a scalar value) to *out.
void Append(char32_t cp, std::string* out);

// Unicode White_Space property (what Rust's char::is_whitespace tests).
bool IsWhitespace(char32_t cp);

}  // namespace hearth::tokenizer::utf8

#endif  // HEARTH_COMMON_TOKENIZER_UTF8_H_
