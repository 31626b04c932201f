#include "common/tokenizer/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace hearth::tokenizer::utf8 {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8Test, FindInvalid) {
  EXPECT_EQ(FindInvalid(""), std::string_view::npos);
  EXPECT_EQ(FindInvalid("plain ascii"), std::string_view::npos);
  EXPECT_EQ(FindInvalid("h\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80"),
            std::string_view::npos);
  EXPECT_EQ(FindInvalid("ab\x80"), 2u);            // stray continuation
  EXPECT_EQ(FindInvalid("ab\xC3"), 2u);            // truncated
  EXPECT_EQ(FindInvalid("\xC0\xAF"), 0u);          // overlong
  EXPECT_EQ(FindInvalid("x\xED\xA0\x80"), 1u);     // surrogate
  EXPECT_EQ(FindInvalid("\xF4\x90\x80\x80"), 0u);  // > U+10FFFF
}

TEST(Utf8Test, DecodeLossyReplacesMaximalSubparts) {
  EXPECT_EQ(DecodeLossy("ok"), "ok");
  // E6 97 is a truncated 3-byte sequence: one replacement, as in WHATWG.
  EXPECT_EQ(DecodeLossy("\xE6\x97"), kFffd);
  EXPECT_EQ(DecodeLossy("\xE6\x97x"), kFffd + "x");
  // Each invalid lead byte is its own subpart.
  EXPECT_EQ(DecodeLossy("\x80\x80"), kFffd + kFffd);
  // E0 80: 80 is not a valid second byte after E0 -> two replacements.
  EXPECT_EQ(DecodeLossy("\xE0\x80"), kFffd + kFffd);
  EXPECT_EQ(DecodeLossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
}

TEST(Utf8Test, DecodeAndAppendRoundTrip) {
  for (char32_t cp : {0x24, 0xA2, 0x20AC, 0x10348, 0x10FFFF}) {
    std::string s;
    Append(cp, &s);
    size_t len = 0;
    EXPECT_EQ(SequenceLength(s, 0), s.size());
    EXPECT_EQ(DecodeAt(s, 0, &len), cp);
    EXPECT_EQ(len, s.size());
  }
}

TEST(Utf8Test, Whitespace) {
  EXPECT_TRUE(IsWhitespace(' '));
  EXPECT_TRUE(IsWhitespace('\n'));
  EXPECT_TRUE(IsWhitespace(0x3000));
  EXPECT_TRUE(IsWhitespace(0x2009));
  EXPECT_FALSE(IsWhitespace('a'));
  EXPECT_FALSE(IsWhitespace(0x200B));  // zero width space is not White_Space
}

}  // namespace
}  // namespace hearth::tokenizer::utf8
