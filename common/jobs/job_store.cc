#include "common/jobs/job_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace hearth::jobs {
namespace {

// Bumped when the table layout changes; a file from a newer hearth is refused
// rather than misread.
constexpr int kSchemaVersion = 1;

constexpr const char* kSchema = R"sql(
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  state INTEGER NOT NULL,
  progress REAL NOT NULL,
  message TEXT NOT NULL,
  metrics TEXT NOT NULL,
  artifacts TEXT NOT NULL,
  error TEXT NOT NULL,
  create_us INTEGER NOT NULL,
  start_us INTEGER NOT NULL,
  end_us INTEGER NOT NULL,
  spec_json TEXT NOT NULL,
  cancel_requested INTEGER NOT NULL,
  version INTEGER NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE TABLE id_counters (
  key TEXT PRIMARY KEY,
  last INTEGER NOT NULL
);
PRAGMA user_version = 1;
)sql";

// Column list shared by every SELECT, in the order RowToRecord reads it.
constexpr const char* kColumns =
    "id, kind, state, progress, message, metrics, artifacts, error, "
    "create_us, start_us, end_us, spec_json, cancel_requested, version, seq";

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

// Owns one prepared statement. Bind indices are 1-based, column indices
// 0-based, as in SQLite.
class Statement {
 public:
  Statement() = default;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  int Prepare(sqlite3* db, absl::string_view sql) {
    return sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()),
                              &stmt_, nullptr);
  }
  void Bind(int i, absl::string_view text) {
    sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()),
                      SQLITE_TRANSIENT);
  }
  void Bind(int i, int64_t value) { sqlite3_bind_int64(stmt_, i, value); }
  void Bind(int i, double value) { sqlite3_bind_double(stmt_, i, value); }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }

  std::string Text(int col) const {
    const unsigned char* text = sqlite3_column_text(stmt_, col);
    if (text == nullptr) return "";
    return std::string(reinterpret_cast<const char*>(text),
                       sqlite3_column_bytes(stmt_, col));
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) const { return sqlite3_column_double(stmt_, col); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

// Maps are kept as JSON text: one column each, readable with the sqlite3
// shell when someone has to look at a store by hand.
std::string MetricsToJson(const std::map<std::string, double>& metrics) {
  nlohmann::json json = nlohmann::json::object();
  for (const auto& [name, value] : metrics) {
    // JSON has no NaN/Inf; null stands for "not a number" and is read back
    // as NaN.
    if (std::isfinite(value)) {
      json[name] = value;
    } else {
      json[name] = nullptr;
    }
  }
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ArtifactsToJson(const std::map<std::string, std::string>& map) {
  nlohmann::json json = nlohmann::json::object();
  for (const auto& [role, path] : map) json[role] = path;
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<nlohmann::json> ParseObject(const std::string& text,
                                           absl::string_view id,
                                           absl::string_view column) {
  nlohmann::json json =
      nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::DataLossError(
        absl::StrCat("job ", id, ": stored ", column, " is not a JSON object"));
  }
  return json;
}

absl::Status ValidateId(absl::string_view id) {
  if (id.empty() || id.size() > 128 || id.front() == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat("job id '", id, "' must be 1-128 characters"));
  }
  // Ids name checkpoint folders, so no separators or shell surprises.
  for (char c : id) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
      return absl::InvalidArgumentError(absl::StrCat(
          "job id '", id, "' may hold only letters, digits, '-', '_', '.'"));
    }
  }
  return absl::OkStatus();
}

// Rolls back unless Commit() succeeded, so every early return leaves the
// database as it was.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {}
  ~Transaction() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  // IMMEDIATE takes the write lock up front, so a read-then-write cannot
  // lose a race against another connection.
  int Begin() {
    int rc = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    open_ = rc == SQLITE_OK;
    return rc;
  }
  int Commit() {
    int rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) open_ = false;
    return rc;
  }

 private:
  sqlite3* db_;
  bool open_ = false;
};

}  // namespace

absl::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kSucceeded:
      return "SUCCEEDED";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kCancelled:
      return "CANCELLED";
    case JobState::kUnspecified:
      break;
  }
  return "UNSPECIFIED";
}

bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

namespace {

absl::StatusOr<JobRecord> RowToRecord(const Statement& row) {
  JobRecord record;
  record.id = row.Text(0);
  record.kind = row.Text(1);
  int64_t state = row.Int(2);
  if (state < static_cast<int>(JobState::kQueued) ||
      state > static_cast<int>(JobState::kCancelled)) {
    return absl::DataLossError(absl::StrCat(
        "job ", record.id, ": stored state ", state, " is not a job state"));
  }
  record.state = static_cast<JobState>(state);
  record.progress = row.Double(3);
  record.message = row.Text(4);
  HEARTH_ASSIGN_OR_RETURN(nlohmann::json metrics,
                          ParseObject(row.Text(5), record.id, "metrics"));
  for (const auto& [name, value] : metrics.items()) {
    if (value.is_number()) {
      record.metrics[name] = value.get<double>();
    } else if (value.is_null()) {
      record.metrics[name] = std::numeric_limits<double>::quiet_NaN();
    } else {
      return absl::DataLossError(absl::StrCat(
          "job ", record.id, ": stored metric '", name, "' is not a number"));
    }
  }
  HEARTH_ASSIGN_OR_RETURN(nlohmann::json artifacts,
                          ParseObject(row.Text(6), record.id, "artifacts"));
  for (const auto& [role, path] : artifacts.items()) {
    if (!path.is_string()) {
      return absl::DataLossError(absl::StrCat(
          "job ", record.id, ": stored artifact '", role, "' is not a path"));
    }
    record.artifacts[role] = path.get<std::string>();
  }
  record.error = row.Text(7);
  record.create_time = absl::FromUnixMicros(row.Int(8));
  record.start_time = absl::FromUnixMicros(row.Int(9));
  record.end_time = absl::FromUnixMicros(row.Int(10));
  record.spec_json = row.Text(11);
  record.cancel_requested = row.Int(12) != 0;
  record.version = row.Int(13);
  return record;
}

}  // namespace

JobStore::JobStore(std::string path, sqlite3* db)
    : path_(std::move(path)), db_(db) {}

JobStore::~JobStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close_v2(db_);
}

absl::Status JobStore::Error(int rc, absl::string_view what) {
  std::string message =
      absl::StrCat("job store ", path_, ": ", what, ": ", sqlite3_errmsg(db_),
                   " (sqlite code ", rc, ")");
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(absl::StrCat(
          message, "; the file is damaged or not a job store: move it aside"));
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::FailedPreconditionError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
      return absl::UnavailableError(message);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status JobStore::Exec(const char* sql) {
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return Error(rc, sql);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(
      path.c_str(), &db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
      nullptr);
  if (rc != SQLITE_OK) {
    std::string detail =
        db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path, ": cannot open: ", detail));
  }
  std::unique_ptr<JobStore> store(new JobStore(path, db));
  absl::MutexLock lock(&store->mu_);
  HEARTH_RETURN_IF_ERROR(store->Init());
  return store;
}

absl::Status JobStore::Init() {
  // Another process (an old instance still shutting down) may hold the lock
  // for a moment; wait instead of failing.
  sqlite3_busy_timeout(db_, 5000);
  // WAL: readers never block the writer. synchronous=FULL: every commit is
  // fsync'd before it returns, so a committed record survives kill -9.
  HEARTH_RETURN_IF_ERROR(Exec("PRAGMA journal_mode = WAL"));
  HEARTH_RETURN_IF_ERROR(Exec("PRAGMA synchronous = FULL"));

  // A damaged page would otherwise surface later as a failed Get; the store
  // is small, so check it all now and refuse to start instead.
  {
    Statement check;
    int rc = check.Prepare(db_, "PRAGMA quick_check");
    if (rc != SQLITE_OK) return Error(rc, "integrity check");
    rc = check.Step();
    if (rc != SQLITE_ROW) return Error(rc, "integrity check");
    if (std::string result = check.Text(0); result != "ok") {
      return absl::DataLossError(absl::StrCat(
          "job store ", path_, ": integrity check failed: ", result,
          "; the file is damaged: move it aside"));
    }
  }

  Statement version_query;
  int rc = version_query.Prepare(db_, "PRAGMA user_version");
  if (rc != SQLITE_OK || (rc = version_query.Step()) != SQLITE_ROW) {
    return Error(rc, "reading schema version");
  }
  int64_t version = version_query.Int(0);
  if (version == kSchemaVersion) return absl::OkStatus();
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job store ", path_, " has schema version ", version,
        ", newer than this hearth understands (", kSchemaVersion, ")"));
  }

  Transaction txn(db_);
  if (rc = txn.Begin(); rc != SQLITE_OK) return Error(rc, "creating schema");
  // Version 0 is a fresh file, unless someone pointed us at another
  // program's database: do not add tables to that.
  Statement tables;
  rc = tables.Prepare(db_, "SELECT count(*) FROM sqlite_master");
  if (rc != SQLITE_OK || (rc = tables.Step()) != SQLITE_ROW) {
    return Error(rc, "reading schema");
  }
  if (tables.Int(0) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path_,
                     " is an SQLite database but not a hearth job store"));
  }
  HEARTH_RETURN_IF_ERROR(Exec(kSchema));
  if (rc = txn.Commit(); rc != SQLITE_OK) return Error(rc, "creating schema");
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobStore::NextId(absl::string_view prefix) {
  if (prefix.empty() || prefix.size() > 32 ||
      !std::all_of(prefix.begin(), prefix.end(),
                   [](char c) { return absl::ascii_isalnum(c) || c == '_'; })) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job id prefix '", prefix, "' must be 1-32 letters, digits or '_'"));
  }
  std::string day =
      absl::FormatTime("%Y%m%d", absl::Now(), absl::UTCTimeZone());
  std::string key = absl::StrCat(prefix, "-", day);

  absl::MutexLock lock(&mu_);
  Transaction txn(db_);
  int rc = txn.Begin();
  if (rc != SQLITE_OK) return Error(rc, "allocating a job id");
  // Skips numbers already taken, in case records were copied in from
  // another store with its own counter.
  for (;;) {
    Statement bump;
    rc = bump.Prepare(db_,
                      "INSERT INTO id_counters (key, last) VALUES (?1, 1) "
                      "ON CONFLICT (key) DO UPDATE SET last = last + 1 "
                      "RETURNING last");
    if (rc != SQLITE_OK) return Error(rc, "allocating a job id");
    bump.Bind(1, key);
    if ((rc = bump.Step()) != SQLITE_ROW) {
      return Error(rc, "allocating a job id");
    }
    std::string id = absl::StrFormat("%s-%04d", key, bump.Int(0));
    if ((rc = bump.Step()) != SQLITE_DONE) {
      return Error(rc, "allocating a job id");
    }

    Statement taken;
    rc = taken.Prepare(db_, "SELECT 1 FROM jobs WHERE id = ?1");
    if (rc != SQLITE_OK) return Error(rc, "allocating a job id");
    taken.Bind(1, id);
    rc = taken.Step();
    if (rc == SQLITE_ROW) continue;
    if (rc != SQLITE_DONE) return Error(rc, "allocating a job id");

    if ((rc = txn.Commit()) != SQLITE_OK) {
      return Error(rc, "allocating a job id");
    }
    return id;
  }
}

absl::Status JobStore::Insert(JobRecord* record) {
  HEARTH_RETURN_IF_ERROR(ValidateId(record->id));
  if (record->create_time == absl::UnixEpoch()) {
    record->create_time = absl::Now();
  }
  absl::MutexLock lock(&mu_);
  Statement insert;
  int rc = insert.Prepare(
      db_,
      "INSERT INTO jobs (id, kind, state, progress, message, metrics, "
      "artifacts, error, create_us, start_us, end_us, spec_json, "
      "cancel_requested, version) VALUES "
      "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 1)");
  if (rc != SQLITE_OK) return Error(rc, absl::StrCat("inserting ", record->id));
  insert.Bind(1, record->id);
  insert.Bind(2, record->kind);
  insert.Bind(3, static_cast<int64_t>(record->state));
  insert.Bind(4, record->progress);
  insert.Bind(5, record->message);
  insert.Bind(6, MetricsToJson(record->metrics));
  insert.Bind(7, ArtifactsToJson(record->artifacts));
  insert.Bind(8, record->error);
  insert.Bind(9, absl::ToUnixMicros(record->create_time));
  insert.Bind(10, absl::ToUnixMicros(record->start_time));
  insert.Bind(11, absl::ToUnixMicros(record->end_time));
  insert.Bind(12, record->spec_json);
  insert.Bind(13, static_cast<int64_t>(record->cancel_requested));
  rc = insert.Step();
  if ((rc & 0xff) == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError(
        absl::StrCat("job ", record->id, " already exists"));
  }
  if (rc != SQLITE_DONE) {
    return Error(rc, absl::StrCat("inserting ", record->id));
  }
  record->version = 1;
  return absl::OkStatus();
}

absl::Status JobStore::Update(JobRecord* record, bool force) {
  const std::string what = absl::StrCat("updating ", record->id);
  absl::MutexLock lock(&mu_);
  Transaction txn(db_);
  int rc = txn.Begin();
  if (rc != SQLITE_OK) return Error(rc, what);

  Statement current;
  rc = current.Prepare(db_, "SELECT state, version FROM jobs WHERE id = ?1");
  if (rc != SQLITE_OK) return Error(rc, what);
  current.Bind(1, record->id);
  rc = current.Step();
  if (rc == SQLITE_DONE) {
    return absl::NotFoundError(absl::StrCat("job ", record->id, " not found"));
  }
  if (rc != SQLITE_ROW) return Error(rc, what);
  auto stored_state = static_cast<JobState>(current.Int(0));
  if (IsTerminal(stored_state) && !force) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", record->id, " is already ",
                     JobStateName(stored_state), " and cannot change"));
  }
  int64_t version = std::max(current.Int(1), record->version) + 1;

  Statement update;
  rc = update.Prepare(
      db_,
      "UPDATE jobs SET kind = ?2, state = ?3, progress = ?4, message = ?5, "
      "metrics = ?6, artifacts = ?7, error = ?8, create_us = ?9, "
      "start_us = ?10, end_us = ?11, spec_json = ?12, cancel_requested = ?13, "
      "version = ?14 WHERE id = ?1");
  if (rc != SQLITE_OK) return Error(rc, what);
  update.Bind(1, record->id);
  update.Bind(2, record->kind);
  update.Bind(3, static_cast<int64_t>(record->state));
  update.Bind(4, record->progress);
  update.Bind(5, record->message);
  update.Bind(6, MetricsToJson(record->metrics));
  update.Bind(7, ArtifactsToJson(record->artifacts));
  update.Bind(8, record->error);
  update.Bind(9, absl::ToUnixMicros(record->create_time));
  update.Bind(10, absl::ToUnixMicros(record->start_time));
  update.Bind(11, absl::ToUnixMicros(record->end_time));
  update.Bind(12, record->spec_json);
  update.Bind(13, static_cast<int64_t>(record->cancel_requested));
  update.Bind(14, version);
  if ((rc = update.Step()) != SQLITE_DONE) return Error(rc, what);
  if ((rc = txn.Commit()) != SQLITE_OK) return Error(rc, what);
  record->version = version;
  return absl::OkStatus();
}

absl::StatusOr<JobRecord> JobStore::Get(absl::string_view id) {
  absl::MutexLock lock(&mu_);
  Statement query;
  int rc = query.Prepare(
      db_, absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?1"));
  if (rc != SQLITE_OK) return Error(rc, absl::StrCat("reading job ", id));
  query.Bind(1, id);
  rc = query.Step();
  if (rc == SQLITE_DONE) {
    return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  }
  if (rc != SQLITE_ROW) return Error(rc, absl::StrCat("reading job ", id));
  return RowToRecord(query);
}

absl::StatusOr<JobPage> JobStore::List(JobState state, int page_size,
                                       absl::string_view page_token) {
  if (page_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must not be negative, got ", page_size));
  }
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  if (static_cast<int>(state) < 0 ||
      static_cast<int>(state) > static_cast<int>(JobState::kCancelled)) {
    return absl::InvalidArgumentError(
        absl::StrCat("state ", static_cast<int>(state), " is not a job state"));
  }
  // The token is the insertion sequence number of the last job returned:
  // the next page starts strictly below it, which is what keeps pages stable
  // while new jobs arrive at the top.
  int64_t before = 0;
  if (!page_token.empty() &&
      (!absl::SimpleAtoi(page_token, &before) || before <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token '", page_token,
                     "' is not a token from a previous ListJobs response"));
  }

  absl::MutexLock lock(&mu_);
  Statement query;
  int rc = query.Prepare(
      db_, absl::StrCat("SELECT ", kColumns,
                        " FROM jobs WHERE (?1 = 0 OR state = ?1) AND "
                        "(?2 = 0 OR seq < ?2) ORDER BY seq DESC LIMIT ?3"));
  if (rc != SQLITE_OK) return Error(rc, "listing jobs");
  query.Bind(1, static_cast<int64_t>(state));
  query.Bind(2, before);
  // One extra row tells whether another page follows.
  query.Bind(3, static_cast<int64_t>(page_size) + 1);
  JobPage page;
  int64_t last_seq = 0;
  while ((rc = query.Step()) == SQLITE_ROW) {
    if (static_cast<int>(page.jobs.size()) == page_size) {
      page.next_page_token = absl::StrCat(last_seq);
      break;
    }
    HEARTH_ASSIGN_OR_RETURN(JobRecord record, RowToRecord(query));
    page.jobs.push_back(std::move(record));
    last_seq = query.Int(14);
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Error(rc, "listing jobs");
  return page;
}

absl::StatusOr<std::vector<JobRecord>> JobStore::ListUnfinished() {
  absl::MutexLock lock(&mu_);
  Statement query;
  int rc = query.Prepare(
      db_, absl::StrCat("SELECT ", kColumns,
                        " FROM jobs WHERE state IN (?1, ?2) ORDER BY seq"));
  if (rc != SQLITE_OK) return Error(rc, "listing unfinished jobs");
  query.Bind(1, static_cast<int64_t>(JobState::kQueued));
  query.Bind(2, static_cast<int64_t>(JobState::kRunning));
  std::vector<JobRecord> records;
  while ((rc = query.Step()) == SQLITE_ROW) {
    HEARTH_ASSIGN_OR_RETURN(JobRecord record, RowToRecord(query));
    records.push_back(std::move(record));
  }
  if (rc != SQLITE_DONE) return Error(rc, "listing unfinished jobs");
  return records;
}

}  // namespace hearth::jobs
