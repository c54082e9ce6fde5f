// Generate with EoS-first decoding through the C++ RAII wrapper and print the statistics.
// Usage: generate [MODEL_DIR] [PROMPT]
#include <iostream>

#include "diffugpt.hpp"

int main(int argc, char **argv) {
    const std::string path = argc > 1 ? argv[1] : "models/default";
    const std::string prompt = argc > 2 ? argv[2] : "Lantern \\Lan\"tern\\, n.";
    try {
        auto model = diffugpt::Model::load(path);
        auto info = model.info();
        std::cout << "diffugpt " << dgpt_version() << ": " << info.n_params << " parameters, vocab "
                  << info.vocab_size << "\n";
        auto session = model.session();
        auto params = diffugpt::default_params();
        params.canvas_len = 32;
        params.length_mode = DGPT_LENGTH_EOS_FIRST;
        params.predictor = DGPT_PREDICTOR_THRESHOLD;
        params.predictor_value = 0.5f;
        auto result = session.generate(prompt, params);
        auto st = result.stats();
        std::cout << prompt << result.text() << "\n"
                  << "predicted_len=" << st.predicted_len << " final_len=" << st.final_len
                  << " canvas=" << st.canvas_len << "->" << st.final_canvas_len << " steps=" << st.steps
                  << " forward_passes=" << st.forward_passes << " elapsed=" << st.elapsed_s << "s\n";
        if (model.detokenize(model.tokenize("Hello world")) != "Hello world") return 2;
        // Errors become exceptions with the library's message.
        try {
            diffugpt::Model::load("/nonexistent");
            return 3;
        } catch (const diffugpt::Error &e) {
            std::cout << "expected error: " << e.what() << "\n";
        }
        return st.final_len == result.tokens().size() ? 0 : 4;
    } catch (const std::exception &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
