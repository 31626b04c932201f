#include "services/gateway/api_keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hearth::gateway {
namespace {

using ::absl::StatusCode;

constexpr char kAliceSecret[] = "hk_alice_secret";
constexpr char kBobSecret[] = "hk_bob_secret";

std::string Entry(const std::string& id, const std::string& secret,
                  const std::string& extra = "") {
  return absl::StrCat("  - id: ", id, "\n    sha256: ", Sha256Hex(secret),
                      "\n    scopes: [generate]\n", extra);
}

std::string TwoKeys() {
  return "keys:\n" +
         Entry("alice", kAliceSecret,
               "    models: [\"tiny\"]\n"
               "    limits: {requests_per_second: 5, burst: 10, "
               "tokens_per_minute: 6000, max_concurrent_streams: 2}\n"
               "    max_priority: 2\n") +
         Entry("bob", kBobSecret);
}

class TempDir {
 public:
  TempDir() {
    path_ = absl::StrCat(::testing::TempDir(), "/api_keys_test_", getpid(), "_",
                         counter_++);
    mkdir(path_.c_str(), 0700);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& text) {
  // Replace by rename, as editors and config management do.
  std::string tmp = path + ".new";
  std::ofstream(tmp) << text;
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Crypto, Sha256HexMatchesTheStandardVector) {
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Crypto, ConstantTimeEqualsIsEquality) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("digest-bytes", "digest-bytes"));
  EXPECT_FALSE(ConstantTimeEquals("digest-bytes", "digest-bytez"));
  EXPECT_FALSE(ConstantTimeEquals("digest-bytes", "Digest-bytes"));
  EXPECT_FALSE(ConstantTimeEquals("digest", "digest-bytes"));
  std::string a(32, '\0'), b(32, '\0');
  b[31] = 1;  // embedded NULs must not end the comparison early
  EXPECT_FALSE(ConstantTimeEquals(a, b));
}

TEST(Crypto, GeneratedSecretsAreLongRandomAndWellFormed) {
  std::string a = GenerateKeySecret(), b = GenerateKeySecret();
  EXPECT_NE(a, b);
  ASSERT_EQ(a.size(), 3u + 52u);  // "hk_" + base32 of 32 bytes
  EXPECT_TRUE(absl::StartsWith(a, "hk_"));
  for (char c : a.substr(3)) {
    EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '2' && c <= '7')) << c;
  }
}

TEST(ExtractApiKey, BearerAndXApiKey) {
  EXPECT_EQ(*ExtractApiKey("Bearer hk_x", ""), "hk_x");
  EXPECT_EQ(*ExtractApiKey("bearer   hk_x  ", ""), "hk_x");
  EXPECT_EQ(*ExtractApiKey("BEARER\thk_x", ""), "hk_x");
  EXPECT_EQ(*ExtractApiKey("", " hk_y "), "hk_y");
  // authorization wins when both are present.
  EXPECT_EQ(*ExtractApiKey("Bearer hk_x", "hk_y"), "hk_x");
}

TEST(ExtractApiKey, MissingOrMalformedIsUnauthenticated) {
  EXPECT_EQ(ExtractApiKey("", "").status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(ExtractApiKey("Basic dXNlcjpwdw==", "").status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(ExtractApiKey("Bearer", "").status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(ExtractApiKey("Bearerhk_x", "").status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(ExtractApiKey("hk_x", "").status().code(),
            StatusCode::kUnauthenticated);
}

TEST(ApiKeyStore, AuthenticatesByHashOfTheSecret) {
  auto store = ApiKeyStore::FromText(TwoKeys(), "keys.yaml");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->size(), 2u);
  auto alice = (*store)->Authenticate(kAliceSecret);
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ((*alice)->id, "alice");
  EXPECT_EQ((*alice)->limits.requests_per_second, 5);
  EXPECT_EQ((*alice)->limits.burst, 10);
  EXPECT_EQ((*alice)->limits.tokens_per_minute, 6000);
  EXPECT_EQ((*alice)->limits.max_concurrent_streams, 2);
  EXPECT_EQ((*alice)->max_priority, 2);
  auto bob = (*store)->Authenticate(kBobSecret);
  ASSERT_TRUE(bob.ok());
  EXPECT_EQ((*bob)->id, "bob");
  EXPECT_EQ((*bob)->models, std::vector<std::string>{"*"});  // default
  EXPECT_EQ((*store)->FindById("bob"), *bob);
}

TEST(ApiKeyStore, WrongOrMissingKeyIsUnauthenticatedAndNotEchoed) {
  auto store = ApiKeyStore::FromText(TwoKeys(), "keys.yaml");
  ASSERT_TRUE(store.ok());
  const std::string wrong = "hk_alice_secreT";
  auto result = (*store)->Authenticate(wrong);
  EXPECT_EQ(result.status().code(), StatusCode::kUnauthenticated);
  EXPECT_FALSE(absl::StrContains(result.status().message(), wrong));
  // The stored hash itself is not a valid secret.
  EXPECT_EQ((*store)->Authenticate(Sha256Hex(kAliceSecret)).status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ((*store)->Authenticate("").status().code(),
            StatusCode::kUnauthenticated);
}

TEST(Authorize, ScopeAndModel) {
  auto store = ApiKeyStore::FromText(TwoKeys(), "keys.yaml");
  ASSERT_TRUE(store.ok());
  const ApiKey& alice = **(*store)->Authenticate(kAliceSecret);
  EXPECT_TRUE(Authorize(alice, kScopeGenerate, "tiny").ok());

  absl::Status status = Authorize(alice, kScopeAdmin, "");
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(status.message(), "scope 'admin'")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "alice")) << status;

  status = Authorize(alice, kScopeGenerate, "big");
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(status.message(), "model 'big'")) << status;

  const ApiKey& bob = **(*store)->Authenticate(kBobSecret);
  EXPECT_TRUE(Authorize(bob, kScopeGenerate, "anything").ok());  // "*"
}

TEST(Authorize, AdminDoesNotImplyOtherScopes) {
  ApiKey key;
  key.id = "ops";
  key.scopes = {"admin"};
  EXPECT_TRUE(Authorize(key, kScopeAdmin, "").ok());
  EXPECT_EQ(Authorize(key, kScopeGenerate, "tiny").code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(Authorize(key, kScopeQuantize, "").code(),
            StatusCode::kPermissionDenied);
}

TEST(ApiKey, ClampPriorityNeverExceedsMaxPriority) {
  ApiKey key;
  key.max_priority = 2;
  EXPECT_EQ(key.ClampPriority(1, 1), 2);  // asked for more than allowed
  EXPECT_EQ(key.ClampPriority(0, 1), 2);  // default level is too high too
  EXPECT_EQ(key.ClampPriority(3, 1), 3);
  EXPECT_EQ(key.ClampPriority(0, 3), 3);
}

TEST(ParseApiKeys, ErrorsNameTheKeyFieldAndLine) {
  struct Case {
    std::string text;
    std::string expected;
  };
  const std::string sha = Sha256Hex("x");
  std::vector<Case> cases = {
      {"keys:\n  - id: a\n    sha256: " + sha + "\n    scopes: [generat]\n",
       "keys.yaml: keys[0] (id \"a\", line 2): scopes: unknown scope "
       "\"generat\""},
      {"keys:\n" + Entry("a", "1") + "  - id: b\n    sha256: abc\n",
       "keys[1] (id \"b\", line 5): sha256: must be 64 hex digits"},
      {"keys:\n  - id: a\n    scopes: [generate]\n",
       "keys[0] (id \"a\", line 2): sha256: missing"},
      {"keys:\n" + Entry("a", "1") + Entry("a", "2"),
       "keys[1] (id \"a\", line 5): id: duplicates keys[0]"},
      {"keys:\n" + Entry("a", "1") + Entry("b", "1"),
       "keys[1] (id \"b\", line 5): sha256: same secret as keys[0]"},
      {"keys:\n" + Entry("a", "1", "    limits: {burst: -1}\n"),
       "keys[0] (id \"a\", line 2): limits.burst: must be >= 0"},
      {"keys:\n" + Entry("a", "1", "    limits: {rps: 1}\n"),
       "limits.rps: unknown field"},
      {"keys:\n" + Entry("a", "1", "    limits: {burst: lots}\n"),
       "limits.burst: must be an integer (got \"lots\")"},
      {"keys:\n" + Entry("a", "1", "    scope: [admin]\n"),
       "keys[0] (id \"a\", line 2): scope: unknown field"},
      {"keys:\n" + Entry("a", "1", "    max_priority: 0\n"),
       "max_priority: must be >= 1"},
      {"keys:\n  - id: \"has space\"\n", "keys[0] (line 2): id: must be"},
      {"keys: [a, b\n", "keys.yaml: line 2"},
      {"users: []\n", "keys.yaml: must be a mapping with a 'keys' list"},
  };
  for (const Case& c : cases) {
    auto result = ParseApiKeys(c.text, "keys.yaml");
    ASSERT_FALSE(result.ok()) << c.text;
    EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(result.status().message(), c.expected))
        << "got: " << result.status() << "\nwant: " << c.expected;
  }
}

TEST(ParseApiKeys, JsonKeyFile) {
  nlohmann::json json = {{"keys",
                          {{{"id", "svc"},
                            {"sha256", Sha256Hex("s")},
                            {"scopes", {"generate", "quantize"}},
                            {"limits", {{"requests_per_second", 0.5}}}}}}};
  auto keys = ParseApiKeys(json.dump(), "keys.json");
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_TRUE((*keys)[0].HasScope("quantize"));
  EXPECT_EQ((*keys)[0].limits.requests_per_second, 0.5);
}

TEST(ApiKeyStore, ReloadWithBadFileKeepsOldKeys) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, TwoKeys());
  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  const uint64_t generation = (*store)->generation();

  WriteFile(path, "keys:\n" + Entry("alice", kAliceSecret) +
                      "  - id: carol\n    sha256: nothex\n    scopes: []\n");
  absl::Status status = (*store)->Reload();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "id \"carol\", line 5"))
      << status;
  EXPECT_TRUE((*store)->Authenticate(kAliceSecret).ok());
  EXPECT_TRUE((*store)->Authenticate(kBobSecret).ok());
  EXPECT_EQ((*store)->generation(), generation);

  std::remove(path.c_str());
  EXPECT_FALSE((*store)->Reload().ok());
  EXPECT_TRUE((*store)->Authenticate(kBobSecret).ok());
}

TEST(ApiKeyStore, ReloadWithRemovedKeyRevokesIt) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, TwoKeys());
  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok());
  const ApiKey* bob = *(*store)->Authenticate(kBobSecret);

  WriteFile(path, "keys:\n" + Entry("alice", kAliceSecret));
  ASSERT_TRUE((*store)->Reload().ok());
  EXPECT_EQ((*store)->Authenticate(kBobSecret).status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ((*store)->FindById("bob"), nullptr);
  EXPECT_TRUE((*store)->Authenticate(kAliceSecret).ok());
  // A request already holding bob's key finishes with a valid pointer.
  EXPECT_EQ(bob->id, "bob");
}

TEST(ApiKeyStore, ReloadIfChangedFollowsTheFile) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, TwoKeys());
  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE(*(*store)->ReloadIfChanged());  // untouched

  WriteFile(path, "keys:\n" + Entry("bob", kBobSecret));
  EXPECT_TRUE(*(*store)->ReloadIfChanged());
  EXPECT_FALSE((*store)->Authenticate(kAliceSecret).ok());

  WriteFile(path, "keys: {broken\n");
  EXPECT_FALSE((*store)->ReloadIfChanged().ok());
  // The bad version is reported once, not on every poll.
  EXPECT_FALSE(*(*store)->ReloadIfChanged());
  EXPECT_TRUE((*store)->Authenticate(kBobSecret).ok());
}

TEST(ApiKeyStore, PollingPicksUpAnEdit) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, "keys:\n" + Entry("alice", kAliceSecret));
  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok());
  (*store)->StartPolling(absl::Milliseconds(10));
  WriteFile(path, TwoKeys());
  absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (!(*store)->Authenticate(kBobSecret).ok() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE((*store)->Authenticate(kBobSecret).ok());
  (*store)->StopPolling();
}

TEST(ApiKeyStore, ReadersNeverSeeATornSnapshot) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, TwoKeys());
  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> alice_failures{0};
  std::thread reader([&] {
    while (!stop.load()) {
      // alice is in every version of the file.
      if (!(*store)->Authenticate(kAliceSecret).ok()) ++alice_failures;
      (*store)->Authenticate(kBobSecret).ok();
    }
  });
  for (int i = 0; i < 50; ++i) {
    WriteFile(path, i % 2 ? TwoKeys()
                          : "keys:\n" + Entry("alice", kAliceSecret) +
                                Entry("k" + std::to_string(i), "s"));
    ASSERT_TRUE((*store)->Reload().ok());
  }
  stop = true;
  reader.join();
  EXPECT_EQ(alice_failures.load(), 0);
}

TEST(CreateApiKey, NewFileIsPrivateAndTheSecretWorks) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  ApiKey spec;
  spec.id = "first";
  spec.scopes = {"generate", "admin"};
  auto secret = CreateApiKey(path, spec);
  ASSERT_TRUE(secret.ok()) << secret.status();
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(absl::StrContains(ReadFile(path), *secret));

  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status() << "\n" << ReadFile(path);
  auto key = (*store)->Authenticate(*secret);
  ASSERT_TRUE(key.ok());
  EXPECT_EQ((*key)->id, "first");
  EXPECT_TRUE((*key)->HasScope("admin"));
}

TEST(CreateApiKey, AppendKeepsCommentsAndRefusesDuplicates) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, "# production keys\n" + TwoKeys() + "# end of list\n");
  ApiKey spec;
  spec.id = "carol";
  spec.scopes = {"distill"};
  spec.models = {"tiny-teacher"};
  spec.limits.tokens_per_minute = 1000;
  auto secret = CreateApiKey(path, spec);
  ASSERT_TRUE(secret.ok()) << secret.status();
  const std::string text = ReadFile(path);
  EXPECT_TRUE(absl::StrContains(text, "# production keys")) << text;
  EXPECT_TRUE(absl::StrContains(text, "# end of list")) << text;

  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status() << "\n" << text;
  EXPECT_EQ((*store)->size(), 3u);
  auto carol = (*store)->Authenticate(*secret);
  ASSERT_TRUE(carol.ok());
  EXPECT_EQ((*carol)->models, std::vector<std::string>{"tiny-teacher"});
  EXPECT_EQ((*carol)->limits.tokens_per_minute, 1000);
  EXPECT_TRUE((*store)->Authenticate(kAliceSecret).ok());

  spec.id = "bob";
  EXPECT_EQ(CreateApiKey(path, spec).status().code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFile(path), text);  // untouched
}

TEST(CreateApiKey, JsonFileStaysJson) {
  TempDir dir;
  const std::string path = dir.File("keys.json");
  WriteFile(path, nlohmann::json{{"keys", nlohmann::json::array()}}.dump());
  ApiKey spec;
  spec.id = "svc";
  spec.scopes = {"generate"};
  auto secret = CreateApiKey(path, spec);
  ASSERT_TRUE(secret.ok()) << secret.status();
  nlohmann::json json = nlohmann::json::parse(ReadFile(path));
  ASSERT_EQ(json["keys"].size(), 1u);
  EXPECT_EQ(json["keys"][0]["id"], "svc");
  EXPECT_EQ(json["keys"][0]["sha256"], Sha256Hex(*secret));
}

TEST(CreateApiKey, FlowStyleYamlIsRewrittenCorrectly) {
  TempDir dir;
  const std::string path = dir.File("keys.yaml");
  WriteFile(path, "keys: [{id: a, sha256: " + Sha256Hex("a") +
                      ", scopes: [generate]}]\nother: 1\n");
  ApiKey spec;
  spec.id = "b";
  spec.scopes = {"generate"};
  auto secret = CreateApiKey(path, spec);
  ASSERT_TRUE(secret.ok()) << secret.status();
  auto store = ApiKeyStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Authenticate("a").ok());
  EXPECT_TRUE((*store)->Authenticate(*secret).ok());
}

}  // namespace
}  // namespace hearth::gateway
