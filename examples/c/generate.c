/* Generate text with EoS-first decoding through the diffugpt C API and print the statistics.
 * Usage: generate [MODEL_DIR] [PROMPT] [CANVAS_LEN] */
#include <stdio.h>
#include <stdlib.h>

#include "diffugpt.h"

static bool on_step(uint32_t step, uint32_t total, const uint32_t *canvas, size_t len, void *user) {
    (void)canvas;
    unsigned *calls = (unsigned *)user;
    *calls += 1;
    fprintf(stderr, "step %u/%u, canvas %zu\n", step, total, len);
    return true;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/default";
    const char *prompt = argc > 2 ? argv[2] : "Lantern \\Lan\"tern\\, n.";
    const long canvas = argc > 3 ? strtol(argv[3], NULL, 10) : 32;
    if (canvas <= 0 || canvas > 100000) {
        fprintf(stderr, "bad canvas length\n");
        return 1;
    }
    printf("diffugpt %s (header %d.%d.%d)\n", dgpt_version(), DGPT_VERSION_MAJOR, DGPT_VERSION_MINOR,
           DGPT_VERSION_PATCH);

    dgpt_model *model = NULL;
    dgpt_model_params mp = dgpt_model_default_params();
    dgpt_status st = dgpt_model_load(path, &mp, &model);
    if (st != DGPT_OK) {
        fprintf(stderr, "load failed (%s): %s\n", dgpt_status_str(st), dgpt_last_error());
        return 1;
    }
    dgpt_session *session = NULL;
    if (dgpt_session_new(model, &session) != DGPT_OK) {
        fprintf(stderr, "session: %s\n", dgpt_last_error());
        dgpt_model_free(model);
        return 1;
    }

    unsigned calls = 0;
    dgpt_generate_params gp = dgpt_generate_default_params();
    gp.canvas_len = (uint32_t)canvas;
    gp.length_mode = DGPT_LENGTH_EOS_FIRST;
    gp.predictor = DGPT_PREDICTOR_QUANTILE;
    gp.predictor_value = 0.9f;
    gp.step_callback = on_step;
    gp.step_user_data = &calls;

    dgpt_result *res = NULL;
    st = dgpt_generate(session, prompt, &gp, &res);
    if (st != DGPT_OK) {
        fprintf(stderr, "generate failed (%s): %s\n", dgpt_status_str(st), dgpt_last_error());
        dgpt_session_free(session);
        dgpt_model_free(model);
        return 1;
    }
    dgpt_stats stats;
    dgpt_result_stats(res, &stats);
    size_t n = 0;
    dgpt_result_tokens(res, &n);
    printf("%s%s\n", prompt, dgpt_result_text(res));
    printf("predicted_len=%lld final_len=%llu canvas=%llu->%llu steps=%llu forward_passes=%llu "
           "callbacks=%u tokens=%zu elapsed=%.3fs\n",
           (long long)stats.predicted_len, (unsigned long long)stats.final_len,
           (unsigned long long)stats.canvas_len, (unsigned long long)stats.final_canvas_len,
           (unsigned long long)stats.steps, (unsigned long long)stats.forward_passes, calls, n,
           stats.elapsed_s);

    /* Tokenize with the negative-required-size convention. */
    int32_t need = dgpt_tokenize(model, prompt, NULL, 0);
    if (need < 0) {
        uint32_t *ids = malloc(sizeof(uint32_t) * (size_t)(-need));
        int32_t got = dgpt_tokenize(model, prompt, ids, -need);
        printf("prompt tokens: %d\n", got);
        free(ids);
    }

    dgpt_result_free(res);
    dgpt_session_free(session);
    dgpt_model_free(model);
    return calls == stats.steps ? 0 : 2;
}
