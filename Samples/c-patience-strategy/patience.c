/* patience.c — a sample Espalier search strategy in plain C, with state that survives a resume.
 *
 *   org.example.strategy.patience/1: DARTS's first-order bilevel steps after `warmup_epochs`
 *   epochs of weight-only steps, stopped early once the validation accuracy has not improved by
 *   more than `min_delta` for `patience` epochs in a row. The host derives the genotype with the
 *   DARTS rule (no `derive`).
 *
 * It shows what a strategy author needs: a table with `requires`, typed parameters, `plan_step`
 * (what each step does), `epoch_end` (ending the search early, logging through the host), and the
 * instance's own state in the search checkpoint (ABI 1.3 `save_state` / `load_state`): the best
 * accuracy so far and the epochs since it improved. Without them an interrupted search would
 * restart its patience from zero on `--resume`. The state is 13 bytes: format byte 1, the best
 * accuracy (IEEE double, little-endian), the epochs since (int32, little-endian); anything else
 * is refused with a message.
 *
 * Build (one command, SDK headers only):
 *   cc -std=c99 -O2 -shared -fPIC -I ../../SDK/include -o libespalier-sample-patience.so patience.c
 */
#include <espalier/espalier.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct patience {
    const es_host_services *host;
    int64_t warmup_epochs, patience;
    double min_delta;
    /* The state (saved): the best validation accuracy after warm-up, and the epochs since it improved. */
    double best;
    int32_t since;
} patience;

enum { STATE_FORMAT = 1, STATE_BYTES = 1 + 8 + 4 };

static es_status fail(const es_host_services *host, es_status status, const char *message) {
    host->set_error(host->host, message);
    return status;
}

static es_status patience_create(const es_component_desc *component, const es_host_services *host, const es_param_value *params,
                                 uint32_t param_count, void **instance) {
    (void)component;
    if (param_count < 3) return fail(host, ES_ERROR_INVALID_ARGUMENT, "patience: expected parameters warmup_epochs, patience, min_delta");
    patience *p = calloc(1, sizeof *p);
    if (!p) return fail(host, ES_ERROR_OUT_OF_MEMORY, "patience: out of memory");
    p->host = host;
    p->warmup_epochs = params[0].int_value;   /* in the order of patience_params; bounds checked by the host */
    p->patience = params[1].int_value;
    p->min_delta = params[2].double_value;
    p->best = -1;
    *instance = p;
    return ES_OK;
}

static void patience_destroy(void *instance) { free(instance); }

static es_status patience_plan_step(void *instance, const es_run_state *state, es_step_plan *plan) {
    patience *p = instance;
    plan->mode = state->epoch < p->warmup_epochs ? ES_STEP_WEIGHTS_ONLY : ES_STEP_BILEVEL;
    plan->second_order = 0;
    plan->arch_lr_scale = 1;
    return ES_OK;
}

static es_status patience_epoch_end(void *instance, const es_run_state *state, const es_epoch_metrics *metrics, int32_t *stop) {
    patience *p = instance;
    if (state->epoch < p->warmup_epochs) return ES_OK;   /* α has not moved yet: nothing to judge */
    if (metrics->valid_accuracy > p->best + p->min_delta) {
        p->best = metrics->valid_accuracy;
        p->since = 0;
        return ES_OK;
    }
    p->since += 1;
    if (p->since >= p->patience) {
        char line[160];
        snprintf(line, sizeof line, "patience: no improvement over %.4f for %d epochs; stopping after epoch %lld",
                 p->best, (int)p->since, (long long)state->epoch + 1);
        p->host->log(p->host->host, ES_LOG_INFO, line);
        *stop = 1;
    }
    return ES_OK;
}

/* Little-endian byte order whatever the machine's, so a checkpoint moves between machines. */
static void put_le(uint8_t *out, uint64_t v, int bytes) { for (int i = 0; i < bytes; i++) out[i] = (uint8_t)(v >> (8 * i)); }
static uint64_t get_le(const uint8_t *in, int bytes) { uint64_t v = 0; for (int i = 0; i < bytes; i++) v |= (uint64_t)in[i] << (8 * i); return v; }

static es_status patience_save_state(void *instance, uint8_t *buffer, uint64_t capacity, uint64_t *length) {
    patience *p = instance;
    *length = STATE_BYTES;
    if (capacity < STATE_BYTES) return ES_ERROR_INVALID_ARGUMENT;   /* the host asks again with *length bytes */
    uint64_t bits;
    memcpy(&bits, &p->best, sizeof bits);
    buffer[0] = STATE_FORMAT;
    put_le(buffer + 1, bits, 8);
    put_le(buffer + 9, (uint32_t)p->since, 4);
    return ES_OK;
}

static es_status patience_load_state(void *instance, const uint8_t *bytes, uint64_t length) {
    patience *p = instance;
    if (length != STATE_BYTES || bytes[0] != STATE_FORMAT)
        return fail(p->host, ES_ERROR_INVALID_ARGUMENT, "patience: the saved state is not 13 bytes of format 1 (written by another version?)");
    uint64_t bits = get_le(bytes + 1, 8);
    double best;
    memcpy(&best, &bits, sizeof best);
    int32_t since = (int32_t)(uint32_t)get_le(bytes + 9, 4);
    if (since < 0 || best != best) return fail(p->host, ES_ERROR_INVALID_ARGUMENT, "patience: the saved state holds a negative count or NaN");
    p->best = best;
    p->since = since;
    return ES_OK;
}

static const es_strategy_vtable patience_table = {
    .struct_size = sizeof(es_strategy_vtable),
    .requires = ES_REQUIRES_ARCH_PARAMS,
    .create = patience_create,
    .destroy = patience_destroy,
    .plan_step = patience_plan_step,
    .epoch_end = patience_epoch_end,
    .derive = NULL,   /* the host's DARTS rule */
    .save_state = patience_save_state,
    .load_state = patience_load_state,
};

static const es_param_desc patience_params[] = {
    { .struct_size = sizeof(es_param_desc), .type = ES_PARAM_INT, .name = "warmup_epochs", .default_value = "0",
      .doc = "epochs of weight-only steps before the architecture trains", .min_value = 0, .max_value = 1000 },
    { .struct_size = sizeof(es_param_desc), .type = ES_PARAM_INT, .name = "patience", .default_value = "3",
      .doc = "stop after this many epochs in a row without a better validation accuracy", .min_value = 1, .max_value = 1000 },
    { .struct_size = sizeof(es_param_desc), .type = ES_PARAM_DOUBLE, .name = "min_delta", .default_value = "0",
      .doc = "an improvement must exceed the best accuracy by more than this", .min_value = 0, .max_value = 1 },
};

static const es_component_desc components[] = {
    { .struct_size = sizeof(es_component_desc), .kind = ES_KIND_STRATEGY, .id = "org.example.strategy.patience/1",
      .summary = "DARTS first-order steps after a weight-only warm-up, stopped when the validation accuracy stops improving (sample C strategy with saved state)",
      .params = patience_params, .param_count = 3, .methods = NULL, .method_count = 0,
      .vtable = &patience_table, .user_data = NULL },
};

static const es_plugin_desc plugin = {
    .struct_size = sizeof(es_plugin_desc),
    .abi = ESPALIER_VERSION_INIT,
    .name = "org.example.patience",
    .version = "1.0.0",
    .summary = "Sample C plugin: a search strategy with early stopping and saved state",
    .init = NULL,
    .components = components,
    .component_count = 1,
};

ESPALIER_EXPORT const es_plugin_desc *espalier_plugin_entry_v1(const es_version *host_abi) {
    if (!host_abi || host_abi->major != ESPALIER_ABI_MAJOR) return NULL;
    return &plugin;
}
