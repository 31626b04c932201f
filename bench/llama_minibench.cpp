// Stand-in for llama.cpp's llama-bench (tg) and llama-batched-bench, linked only
// against a native libllama/ggml build (the real tools also need llama-common,
// ~50 more objects, which had not finished compiling on the shared 2-core VM when
// docs/BENCHMARKS.md was measured). Not part of hearth's CMake build; compile it
// against the llama.cpp source bundled with node-llama-cpp (see BENCHMARKS.md):
//   g++ -O2 -march=native -std=c++17 bench/llama_minibench.cpp -I$L/include \
//     -I$L/ggml/include -L$L/build/bin -lllama -lggml -lggml-base \
//     -Wl,-rpath,$L/build/bin -o minibench-tg && cp minibench-tg minibench-batched
// and pass them to bench/run-vs-llama-cpp --llama_bench / --llama_batched_bench. The loops copy the real tools' exactly:
// llama-bench test_gen (one token per llama_decode, BOS first, then random ids,
// llama_synchronize each step, warm-up of 1 token) and batched-bench's default
// pattern (pl separate prompts of pp random tokens decoded in n_batch chunks,
// then tg steps of pl tokens with logits). Same context defaults as the tools
// (n_batch 2048, n_ubatch 512, flash attention auto, F16 KV cache).
//   minibench tg -m M.gguf -n 128 -t T -r R        -> {"avg_ts": ..., "samples_ts": [...]}
//   minibench batched -m M.gguf -c C -npp P -ntg G -npl 1,4 -t T -tb T [-b B -ub U] [--output-format jsonl]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <sstream>
#include "llama.h"
#include "ggml.h"

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc < 2) return 2;
    // Mode: first argument, or the binary's name (minibench-batched / minibench-tg).
    std::string mode = argv[1], model_path;
    int first = 2;
    if (mode[0] == '-') { mode = strstr(argv[0], "batched") ? "batched" : "tg"; first = 1; }
    int n_gen = 128, threads = 2, reps = 3, n_ctx = 0, pp = 32, tg = 64, n_batch = 2048, n_ubatch = 512;
    std::vector<int> pls = {1};
    for (int i = first; i + 1 < argc; i += 2) {
        std::string f = argv[i], v = argv[i + 1];
        if (f == "-m") model_path = v;
        else if (f == "-n") n_gen = atoi(v.c_str());
        else if (f == "-t" || f == "-tb") threads = atoi(v.c_str());
        else if (f == "-r") reps = atoi(v.c_str());
        else if (f == "-c") n_ctx = atoi(v.c_str());
        else if (f == "-npp") pp = atoi(v.c_str());
        else if (f == "-ntg") tg = atoi(v.c_str());
        else if (f == "-b") n_batch = atoi(v.c_str());
        else if (f == "-ub") n_ubatch = atoi(v.c_str());
        else if (f == "-npl") { pls.clear(); std::stringstream ss(v); std::string x; while (std::getline(ss, x, ',')) pls.push_back(atoi(x.c_str())); }
        else if (f == "--output-format" || f == "-o" || f == "-p") {}
        else { fprintf(stderr, "unknown flag %s\n", f.c_str()); return 2; }
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", model_path.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    llama_context_params cp = llama_context_default_params();
    cp.n_batch = n_batch; cp.n_ubatch = n_ubatch;
    cp.n_threads = threads; cp.n_threads_batch = threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    if (mode == "tg") {
        cp.n_ctx = n_gen;
        llama_context * ctx = llama_init_from_model(model, cp);
        auto gen = [&](int n) {
            llama_token token = llama_vocab_get_add_bos(vocab) ? llama_vocab_bos(vocab) : std::rand() % n_vocab;
            for (int i = 0; i < n; i++) {
                if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) return false;
                llama_synchronize(ctx);
                token = std::rand() % n_vocab;
            }
            return true;
        };
        gen(1);  // warm-up
        std::vector<double> ts;
        for (int r = 0; r < reps; ++r) {
            llama_memory_clear(llama_get_memory(ctx), false);
            const int64_t t0 = ggml_time_us();
            if (!gen(n_gen)) return 1;
            ts.push_back(n_gen / ((ggml_time_us() - t0) / 1e6));
        }
        double avg = 0; for (double x : ts) avg += x / ts.size();
        printf("{\"test\": \"tg%d\", \"n_threads\": %d, \"avg_ts\": %f, \"samples_ts\": [", n_gen, threads, avg);
        for (size_t i = 0; i < ts.size(); ++i) printf("%s%f", i ? ", " : "", ts[i]);
        printf("]}\n");
        llama_free(ctx);
    } else {
        int max_pl = 1; for (int p : pls) max_pl = std::max(max_pl, p);
        cp.n_ctx = n_ctx > 0 ? n_ctx : max_pl * (pp + tg);
        cp.n_seq_max = max_pl;
        llama_context * ctx = llama_init_from_model(model, cp);
        const int n_kv_max = llama_n_ctx(ctx);
        llama_batch batch = llama_batch_init(n_kv_max, 0, 1);
        auto add = [&](llama_token id, int pos, int seq, bool logits) {
            const int i = batch.n_tokens++;
            batch.token[i] = id; batch.pos[i] = pos; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = seq; batch.logits[i] = logits;
        };
        auto decode = [&](bool sync) {
            for (int32_t i = 0; i < batch.n_tokens; i += n_batch) {
                const int32_t n = std::min(n_batch, batch.n_tokens - i);
                llama_batch view = {n, batch.token + i, nullptr, batch.pos + i, batch.n_seq_id + i, batch.seq_id + i, batch.logits + i};
                if (llama_decode(ctx, view) != 0) return false;
                if (sync) llama_synchronize(ctx);
            }
            return true;
        };
        batch.n_tokens = 0;
        for (int i = 0; i < 16; ++i) add(std::rand() % n_vocab, i, 0, false);
        if (!decode(true)) return 1;  // warm-up
        for (int pl : pls) {
            if (pl * (pp + tg) > n_kv_max) continue;
            batch.n_tokens = 0;
            for (int j = 0; j < pl; ++j) for (int i = 0; i < pp; ++i) add(std::rand() % n_vocab, i, j, i == pp - 1);
            llama_memory_clear(llama_get_memory(ctx), false);
            const int64_t t_pp0 = ggml_time_us();
            if (!decode(false)) return 1;
            llama_synchronize(ctx);
            const int64_t t_pp1 = ggml_time_us();
            for (int i = 0; i < tg; ++i) {
                batch.n_tokens = 0;
                for (int j = 0; j < pl; ++j) add(std::rand() % n_vocab, pp + i, j, true);
                if (!decode(true)) return 1;
            }
            const int64_t t_tg1 = ggml_time_us();
            const double t_pp = (t_pp1 - t_pp0) / 1e6, t_tg = (t_tg1 - t_pp1) / 1e6;
            printf("{\"n_kv_max\": %d, \"n_batch\": %d, \"n_ubatch\": %d, \"n_threads\": %d, \"pp\": %d, \"tg\": %d, \"pl\": %d, "
                   "\"t_pp\": %f, \"speed_pp\": %f, \"t_tg\": %f, \"speed_tg\": %f, \"t\": %f, \"speed\": %f, \"tool\": \"minibench\"}\n",
                   n_kv_max, n_batch, n_ubatch, threads, pp, tg, pl, t_pp, pl * pp / t_pp, t_tg, pl * tg / t_tg, t_pp + t_tg,
                   (pl * pp + pl * tg) / (t_pp + t_tg));
            fflush(stdout);
        }
        llama_batch_free(batch);
        llama_free(ctx);
    }
    llama_model_free(model);
    return 0;
}
