#include "common/jobs/job_store.h"

#include <sqlite3.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace hearth::jobs {
namespace {

// gmock is not installed; this stands in for EXPECT_THAT(text,
// HasSubstr(part)).
#define EXPECT_CONTAINS(text, part)                          \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "'" << (text) << "' does not contain '" << (part) << "'"

std::string MakeTempDir() {
  std::string pattern = testing::TempDir() + "/job_store_test_XXXXXX";
  char* dir = mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  return pattern;
}

class JobStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    path_ = dir_ + "/jobs.db";
    auto store = JobStore::Open(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  JobRecord NewJob(const std::string& id, JobState state = JobState::kQueued) {
    JobRecord record;
    record.id = id;
    record.kind = "quantization";
    record.state = state;
    record.spec_json = R"({"method":"gptq"})";
    EXPECT_TRUE(store_->Insert(&record).ok());
    return record;
  }

  std::string dir_, path_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(JobStoreTest, InsertGetRoundTripsEveryField) {
  JobRecord record;
  record.id = "q-20261125-0001";
  record.kind = "quantization";
  record.state = JobState::kRunning;
  record.progress = 0.25;
  record.message = "layer 7/30: gptq q_proj";
  record.metrics = {
      {"loss", 1.5}, {"nan", std::nan("")}, {"tokens_per_second", 1234.5}};
  record.artifacts = {{"model", "/models/tiny-gptq4"},
                      {"report", "/models/tiny-gptq4/quant_report.json"}};
  record.create_time = absl::FromUnixMicros(1764028800123456);
  record.start_time = absl::FromUnixMicros(1764028801000000);
  record.spec_json = R"({"bits":4})";
  ASSERT_TRUE(store_->Insert(&record).ok());
  EXPECT_EQ(record.version, 1);

  auto got = store_->Get(record.id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id, record.id);
  EXPECT_EQ(got->kind, "quantization");
  EXPECT_EQ(got->state, JobState::kRunning);
  EXPECT_DOUBLE_EQ(got->progress, 0.25);
  EXPECT_EQ(got->message, record.message);
  EXPECT_DOUBLE_EQ(got->metrics.at("loss"), 1.5);
  EXPECT_TRUE(std::isnan(got->metrics.at("nan")));
  EXPECT_EQ(got->artifacts, record.artifacts);
  EXPECT_EQ(got->create_time, record.create_time);
  EXPECT_EQ(got->start_time, record.start_time);
  EXPECT_EQ(got->end_time, absl::UnixEpoch());
  EXPECT_EQ(got->spec_json, record.spec_json);
  EXPECT_FALSE(got->cancel_requested);
  EXPECT_EQ(got->version, 1);
}

TEST_F(JobStoreTest, InsertFillsCreateTimeAndRejectsDuplicatesAndBadIds) {
  JobRecord record = NewJob("a-1");
  EXPECT_GT(record.create_time, absl::Now() - absl::Minutes(1));
  JobRecord again = record;
  EXPECT_EQ(store_->Insert(&again).code(), absl::StatusCode::kAlreadyExists);

  JobRecord bad;
  bad.id = "../etc";
  absl::Status status = store_->Insert(&bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(status.message(), "../etc");
}

TEST_F(JobStoreTest, GetUnknownIsNotFoundNamingTheId) {
  auto got = store_->Get("q-19990101-0042");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_CONTAINS(got.status().message(), "q-19990101-0042");
}

TEST_F(JobStoreTest, UpdateBumpsVersionAndProtectsTerminalRecords) {
  JobRecord record = NewJob("a-1");
  record.state = JobState::kRunning;
  record.progress = 0.5;
  ASSERT_TRUE(store_->Update(&record).ok());
  EXPECT_EQ(record.version, 2);
  // A caller that bumped its copy in memory stays monotonic.
  record.version = 10;
  ASSERT_TRUE(store_->Update(&record).ok());
  EXPECT_EQ(record.version, 11);

  record.state = JobState::kSucceeded;
  ASSERT_TRUE(store_->Update(&record).ok());
  record.state = JobState::kRunning;
  absl::Status refused = store_->Update(&record);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(refused.message(), "a-1");
  EXPECT_CONTAINS(refused.message(), "SUCCEEDED");
  EXPECT_EQ(store_->Get("a-1")->state, JobState::kSucceeded);

  ASSERT_TRUE(store_->Update(&record, /*force=*/true).ok());
  EXPECT_EQ(store_->Get("a-1")->state, JobState::kRunning);

  JobRecord missing;
  missing.id = "nope";
  EXPECT_EQ(store_->Update(&missing).code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, NextIdIsDatedAndUniqueAcrossReopen) {
  auto first = store_->NextId("q");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(std::regex_match(*first, std::regex(R"(q-\d{8}-0001)")))
      << *first;
  EXPECT_TRUE(absl::EndsWith(*store_->NextId("q"), "-0002"));
  // Another prefix counts on its own.
  EXPECT_TRUE(absl::EndsWith(*store_->NextId("d"), "-0001"));

  // A number that is already taken (records copied in) is skipped.
  std::string taken = first->substr(0, first->size() - 4) + "0003";
  NewJob(taken);

  store_.reset();
  store_ = std::move(*JobStore::Open(path_));
  EXPECT_TRUE(absl::EndsWith(*store_->NextId("q"), "-0004"));

  EXPECT_EQ(store_->NextId("").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->NextId("a/b").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(JobStoreTest, ListIsNewestFirstWithStablePagesAndStateFilter) {
  for (int i = 0; i < 7; ++i) {
    NewJob(absl::StrCat("job-", i),
           i % 2 == 0 ? JobState::kSucceeded : JobState::kFailed);
  }
  auto page1 = store_->List(JobState::kUnspecified, 3, "");
  ASSERT_TRUE(page1.ok()) << page1.status();
  ASSERT_EQ(page1->jobs.size(), 3u);
  EXPECT_EQ(page1->jobs[0].id, "job-6");
  EXPECT_EQ(page1->jobs[2].id, "job-4");
  ASSERT_FALSE(page1->next_page_token.empty());

  // A job created between pages appears on no later page and shifts nothing.
  NewJob("job-new");
  auto page2 = store_->List(JobState::kUnspecified, 3, page1->next_page_token);
  ASSERT_TRUE(page2.ok()) << page2.status();
  ASSERT_EQ(page2->jobs.size(), 3u);
  EXPECT_EQ(page2->jobs[0].id, "job-3");
  auto page3 = store_->List(JobState::kUnspecified, 3, page2->next_page_token);
  ASSERT_TRUE(page3.ok());
  ASSERT_EQ(page3->jobs.size(), 1u);
  EXPECT_EQ(page3->jobs[0].id, "job-0");
  EXPECT_TRUE(page3->next_page_token.empty());

  auto failed = store_->List(JobState::kFailed, 0, "");
  ASSERT_TRUE(failed.ok());
  std::vector<std::string> ids;
  for (const JobRecord& job : failed->jobs) ids.push_back(job.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"job-5", "job-3", "job-1"}));
  EXPECT_TRUE(failed->next_page_token.empty());

  // Exactly a page's worth leaves no dangling token.
  auto exact = store_->List(JobState::kFailed, 3, "");
  EXPECT_TRUE(exact->next_page_token.empty());

  EXPECT_EQ(store_->List(JobState::kUnspecified, 3, "garbage").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto negative = store_->List(JobState::kUnspecified, -1, "");
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(negative.status().message(), "page_size");
}

TEST_F(JobStoreTest, ListUnfinishedIsOldestFirst) {
  NewJob("a", JobState::kRunning);
  NewJob("b", JobState::kSucceeded);
  NewJob("c", JobState::kQueued);
  NewJob("d", JobState::kCancelled);
  auto unfinished = store_->ListUnfinished();
  ASSERT_TRUE(unfinished.ok());
  ASSERT_EQ(unfinished->size(), 2u);
  EXPECT_EQ((*unfinished)[0].id, "a");
  EXPECT_EQ((*unfinished)[1].id, "c");
}

TEST_F(JobStoreTest, RecordsSurviveReopen) {
  JobRecord record = NewJob("a-1");
  record.state = JobState::kFailed;
  record.error = "spec.bits: 3 is not supported";
  ASSERT_TRUE(store_->Update(&record).ok());
  store_.reset();
  store_ = std::move(*JobStore::Open(path_));
  auto got = store_->Get("a-1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, JobState::kFailed);
  EXPECT_EQ(got->error, record.error);
  EXPECT_EQ(got->version, 2);
}

TEST_F(JobStoreTest, CorruptFileIsAnErrorNamingThePath) {
  store_.reset();
  std::filesystem::remove(path_ + "-wal");
  std::filesystem::remove(path_ + "-shm");
  {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    for (int i = 0; i < 1000; ++i) out << "not a database at all ";
  }
  auto store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_CONTAINS(store.status().message(), path_);
}

TEST_F(JobStoreTest, DamagedPagesAreAnErrorNamingThePath) {
  for (int i = 0; i < 30; ++i) {
    JobRecord record;
    record.id = absl::StrCat("job-", i);
    record.message = std::string(2000, 'x');
    ASSERT_TRUE(store_->Insert(&record).ok());
  }
  store_.reset();  // Checkpoints the WAL into the main file.
  // Keep page 1 (header and schema) so SQLite gets past "not a database",
  // and scribble over the table pages behind it.
  {
    std::fstream file(path_, std::ios::binary | std::ios::in | std::ios::out);
    file.seekp(4096 + 8);
    for (int i = 0; i < 40000; ++i) file.put(static_cast<char>(i * 7));
  }
  auto store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss)
      << store.status();
  EXPECT_CONTAINS(store.status().message(), path_);
}

TEST_F(JobStoreTest, ForeignDatabaseIsRefused) {
  store_.reset();
  std::string other = dir_ + "/other.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t (x)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto store = JobStore::Open(other);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONTAINS(store.status().message(), other);
}

TEST_F(JobStoreTest, UnopenablePathIsAnErrorNamingIt) {
  std::string path = dir_ + "/no/such/folder/jobs.db";
  auto store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_CONTAINS(store.status().message(), path);
}

TEST_F(JobStoreTest, BadRowIsDataLossNamingTheJob) {
  NewJob("a-1");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE jobs SET metrics = '{oops'", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto got = store_->Get("a-1");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_CONTAINS(got.status().message(), "a-1");
  EXPECT_EQ(store_->List(JobState::kUnspecified, 10, "").status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace hearth::jobs
