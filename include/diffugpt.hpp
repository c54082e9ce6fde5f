// diffugpt.hpp — thin C++17 RAII wrapper over diffugpt.h (hand-written; the C header is the ABI).
//
//   auto model = diffugpt::Model::load("path/to/diffugpt-s");
//   auto session = model.session();
//   auto params = diffugpt::default_params();
//   auto result = session.generate("The capital of France is", params);
//   std::cout << result.text() << " (" << result.stats().final_len << " tokens)\n";
//
// Errors throw diffugpt::Error (status + the library's message). Ownership follows the C API:
// Model may be shared across threads (const methods), Session is one thread at a time.
#ifndef DIFFUGPT_HPP
#define DIFFUGPT_HPP

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffugpt.h"

namespace diffugpt {

class Error : public std::runtime_error {
  public:
    Error(dgpt_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
    dgpt_status status() const noexcept { return status_; }

  private:
    dgpt_status status_;
};

inline void check(dgpt_status st) {
    if (st != DGPT_OK) {
        throw Error(st, std::string(dgpt_status_str(st)) + ": " + dgpt_last_error());
    }
}

struct ModelDeleter {
    void operator()(dgpt_model *m) const noexcept { dgpt_model_free(m); }
};
struct SessionDeleter {
    void operator()(dgpt_session *s) const noexcept { dgpt_session_free(s); }
};
struct ResultDeleter {
    void operator()(dgpt_result *r) const noexcept { dgpt_result_free(r); }
};

inline dgpt_generate_params default_params() { return dgpt_generate_default_params(); }
inline dgpt_model_params default_model_params() { return dgpt_model_default_params(); }

class Result {
  public:
    explicit Result(dgpt_result *r) : r_(r) {}
    std::string text() const { return dgpt_result_text(r_.get()); }
    std::vector<uint32_t> tokens() const {
        size_t n = 0;
        const uint32_t *p = dgpt_result_tokens(r_.get(), &n);
        return std::vector<uint32_t>(p, p + n);
    }
    dgpt_stats stats() const {
        dgpt_stats s{};
        check(dgpt_result_stats(r_.get(), &s));
        return s;
    }

  private:
    std::unique_ptr<dgpt_result, ResultDeleter> r_;
};

class Session {
  public:
    explicit Session(dgpt_session *s) : s_(s) {}
    Result generate(const std::string &prompt, const dgpt_generate_params &p) {
        dgpt_result *r = nullptr;
        check(dgpt_generate(s_.get(), prompt.c_str(), &p, &r));
        return Result(r);
    }
    Result generate(const std::vector<uint32_t> &tokens, const dgpt_generate_params &p) {
        dgpt_result *r = nullptr;
        check(dgpt_generate_tokens(s_.get(), tokens.data(), tokens.size(), &p, &r));
        return Result(r);
    }

  private:
    std::unique_ptr<dgpt_session, SessionDeleter> s_;
};

class Model {
  public:
    static Model load(const std::string &path, const dgpt_model_params &p = dgpt_model_default_params()) {
        dgpt_model *m = nullptr;
        check(dgpt_model_load(path.c_str(), &p, &m));
        return Model(m);
    }
    Session session() const {
        dgpt_session *s = nullptr;
        check(dgpt_session_new(m_.get(), &s));
        return Session(s);
    }
    dgpt_model_info info() const {
        dgpt_model_info i{};
        check(dgpt_model_get_info(m_.get(), &i));
        return i;
    }
    std::vector<uint32_t> tokenize(const std::string &text) const {
        int32_t n = dgpt_tokenize(m_.get(), text.c_str(), nullptr, 0);
        if (n == INT32_MIN) check(DGPT_ERR_INVALID_ARG);
        std::vector<uint32_t> ids(static_cast<size_t>(n < 0 ? -n : n));
        if (!ids.empty()) {
            n = dgpt_tokenize(m_.get(), text.c_str(), ids.data(), static_cast<int32_t>(ids.size()));
            if (n < 0) check(DGPT_ERR_INVALID_ARG);
        }
        return ids;
    }
    std::string detokenize(const std::vector<uint32_t> &ids) const {
        int32_t need = dgpt_detokenize(m_.get(), ids.data(), ids.size(), nullptr, 0);
        if (need == INT32_MIN) check(DGPT_ERR_INVALID_ARG);
        std::string out(static_cast<size_t>(-need), '\0');
        int32_t n = dgpt_detokenize(m_.get(), ids.data(), ids.size(), &out[0], -need);
        if (n < 0) check(DGPT_ERR_INVALID_ARG);
        out.resize(static_cast<size_t>(n));
        return out;
    }

  private:
    explicit Model(dgpt_model *m) : m_(m) {}
    std::unique_ptr<dgpt_model, ModelDeleter> m_;
};

}  // namespace diffugpt

#endif  // DIFFUGPT_HPP
