/* espalier_gate.h — gates: architecture parameters → mixing weights or masks.
 *
 * A gate instance maps a logits matrix (rows, cols) to a weights matrix of the same shape:
 *   ES_GATE_OPS       rows = edges, cols = candidate ops   (softmax, Gumbel/GDAS, binary/Proxyless)
 *   ES_GATE_CHANNELS  rows = channels, cols = 1             (FiGS logistic-sigmoid masks)
 *   ES_GATE_INPUTS    rows = connections, cols = 1          (Bonsai-Net saw-wave pruners)
 * A hard gate also says which candidates need not run at all (`active[i] = 0`): the host then
 * skips them entirely — no forward, no backward, no memory. Backward maps ∂L/∂weights to
 * ∂L/∂logits (straight-through estimators live here). Random gates draw from `host->random_*`.
 * Thread rule: host thread, one call at a time per instance.
 */
#ifndef ESPALIER_GATE_H
#define ESPALIER_GATE_H

#include "espalier_host.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t es_gate_granularity;
#define ES_GATE_OPS       1
#define ES_GATE_CHANNELS  2
#define ES_GATE_INPUTS    3

/** Gate flags (es_gate_vtable.flags). */
#define ES_GATE_SAMPLED  1u  /* random: weights differ between calls */
#define ES_GATE_HARD     2u  /* may set active[i] = 0 */

typedef struct es_gate_config {
    uint32_t struct_size;
    es_gate_granularity granularity;
    int64_t rows;
    int64_t cols;
    const char *owner;  /* e.g. "arch/normal/gate" for the normal cell's op gate; "arch/cell3/inputs/gate" for inputs; "gate/channel/N" for channel masks of length N */
} es_gate_config;

typedef struct es_gate_vtable {
    uint32_t struct_size;
    uint32_t flags;         /* ES_GATE_* */
    uint32_t granularities; /* bit (1 << granularity) for each granularity supported */
    uint32_t reserved;

    es_status (*create)(const es_component_desc *component, const es_host_services *host, const es_gate_config *config,
                        const es_param_value *params, uint32_t param_count, void **instance);
    void (*destroy)(void *instance);

    /** weights = gate(logits), both (rows, cols). If `active` is non-NULL it has rows·cols bytes:
     *  write 1 where the candidate must run, 0 where its weight is exactly 0 and it may be
     *  skipped. In evaluation (`state->training == 0`) a sampled gate should be deterministic. */
    es_status (*forward)(void *instance, const es_run_state *state, const es_tensor_view *logits,
                         es_tensor_view *weights, uint8_t *active);
    /** ADDS ∂L/∂logits into d_logits, given ∂L/∂weights and the weights forward wrote. */
    es_status (*backward)(void *instance, const es_run_state *state, const es_tensor_view *logits,
                          const es_tensor_view *weights, const es_tensor_view *d_weights,
                          es_tensor_view *d_logits);
    /** Optional: sets a named scalar (e.g. "tau"); ES_ERROR_UNSUPPORTED if the name is unknown. */
    es_status (*set_value)(void *instance, const char *name, double value);
} es_gate_vtable;

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_GATE_H */
