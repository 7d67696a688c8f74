/* espalier_regularizer.h — regularizers: loss terms and proximal steps.
 *
 * A regularizer sees named targets chosen by the host from what it asks for in `targets`:
 *   ES_TARGET_ARCH          architecture logits of one cell type ("arch/normal", "arch/reduce")
 *   ES_TARGET_WEIGHT_GROUP  a group of weight tensors, e.g. one op on one edge in every cell of a
 *                           type ("group/normal/edge3/sep_conv_3x3"); several parts per group
 *   ES_TARGET_GATE_WEIGHTS  a gate's output weights with per-candidate costs from the accountant
 *                           (bytes or FLOPs) in `costs`: expected-cost and compression terms
 * `loss` adds λ·R to the loss and ADDS ∂(λ·R)/∂value into each target's grad; `proximal` runs
 * after the optimiser's update and changes values in place.
 * Owning the update (a convention, ABI 1.x unchanged): a regularizer with `proximal` and a bool
 * parameter named "owns_update" that resolves to true IS the weight update (ProxSGD, GSparsity):
 * the host runs no SGD step; after the backward and the gradient clip it calls `proximal` with
 * every weight: one ES_TARGET_WEIGHT_GROUP target per group ("group/TYPE/edgeE/OP", including
 * the op's output scale when the space has one) and one named "ungrouped" (every other weight:
 * stem, cell preprocessing, classifier), each with its gradients in `grads`, and `lr` = the
 * host's learning rate of the step. At most one regularizer of a run may own the update.
 * Thread rule: host thread, one call at a time per instance.
 *
 * Gradient convention: `loss` ADDS into targets[i].grads (as a gate's backward adds into
 * d_logits). This differs from an op's raw backward, which OVERWRITES d_input (espalier_op.h).
 * The grads are the parameters' own gradient buffers, already holding the step's other terms,
 * and several targets may share one (a gate's "memory" and "flops" targets): writing instead of
 * adding would erase them.
 */
#ifndef ESPALIER_REGULARIZER_H
#define ESPALIER_REGULARIZER_H

#include "espalier_host.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t es_target_kind;
#define ES_TARGET_ARCH          1
#define ES_TARGET_WEIGHT_GROUP  2
#define ES_TARGET_GATE_WEIGHTS  3

typedef struct es_reg_target {
    uint32_t struct_size;
    es_target_kind kind;
    const char *name;
    uint32_t part_count;
    uint32_t reserved;
    const es_tensor_view *values;  /* part_count views; writable in `proximal` only */
    es_tensor_view *grads;         /* part_count views to add into; data NULL = no gradient wanted */
    const es_tensor_view *costs;   /* ES_TARGET_GATE_WEIGHTS: per-candidate costs, same shape as values; else NULL */
} es_reg_target;

typedef struct es_regularizer_vtable {
    uint32_t struct_size;
    uint32_t targets;  /* bit (1 << kind) for each target kind wanted */

    /** Required. Makes one regularizer instance. Called by the host on the host thread when a search
     *  starts, before its first step and before any other call on the instance: one instance per
     *  `--regularizer` entry (a component selected twice gets two, each with its own settings). A
     *  memory prediction (a dry run) makes its own instances beside those of the real run, so keep no
     *  state outside the instance. `component`: this component's static descriptor (its `user_data` is
     *  yours). `host`: the services table, valid until `destroy`; keep the pointer and read
     *  `host->host` at each call. Do not use `host->search` here: the search services are set up after
     *  every component is created. `params` (the component's parameters in declaration order, resolved
     *  and checked by the host): owned by the host, valid during this call only. `*instance` is NULL on
     *  entry. Memory from `host->alloc` here is counted under the regularizer's owner. Do not call
     *  `declare_param` (it returns ES_ERROR_UNSUPPORTED): only an op's parameters are kept, trained and
     *  checkpointed; keep your own state
     *  in the instance and save it with save_state. Returns ES_OK with `*instance` set to the new
     *  instance (the host passes it, even NULL, to every later call), or an error with
     *  `host->set_error` called: then the host ignores `*instance` and never calls `destroy`, so free
     *  what you made before returning. */
    es_status (*create)(const es_component_desc *component, const es_host_services *host, const es_param_value *params,
                        uint32_t param_count, void **instance);
    /** Required. Frees an instance: called exactly once for each create that returned ES_OK, with
     *  the pointer it wrote (which may be NULL), on the host thread, when the host drops the
     *  regularizer (the end of the search or prediction that made it). No call on the instance
     *  follows. Release what the instance holds: `host->free` what it allocated through
     *  `host->alloc`, then its own memory. A process that is killed never calls it, and an
     *  interrupted search is resumed from the checkpoint: keep nothing here but freeing. */
    void (*destroy)(void *instance);

    /** Optional: *loss = the term's value (λ·R); ADDS its gradient into targets[i].grads (see the
     *  gradient convention above; skip parts whose grad data is NULL). */
    es_status (*loss)(void *instance, const es_run_state *state, es_reg_target *targets,
                      uint32_t target_count, double *loss);
    /** Optional: after the optimiser step with learning rate `lr`, updates values in place. */
    es_status (*proximal)(void *instance, const es_run_state *state, es_reg_target *targets,
                          uint32_t target_count, double lr);
    /** Optional: sets a named scalar (e.g. "lambda"); ES_ERROR_UNSUPPORTED if unknown. */
    es_status (*set_value)(void *instance, const char *name, double value);

    /* ---- Since ABI 1.3: the host reads these only from a plugin whose es_plugin_desc.abi.minor is
     * >= 3 and whose table's struct_size covers them; NULL (or an older plugin) = nothing to save ---- */

    /** Optional: writes the instance's own state (whatever later calls depend on that the host does
     *  not already keep: a best-so-far, a stage's progress, momentum buffers, counters) as an opaque
     *  byte blob into buffer (capacity bytes) and its length to *length. If capacity is too small,
     *  returns ES_ERROR_INVALID_ARGUMENT with *length = the bytes needed (the host then calls again
     *  with a larger buffer; a first call may pass buffer NULL, capacity 0). Length 0 = no state now.
     *  The host stores the blob in the search checkpoint (every epoch and on interrupt).
     *  Why 1.2 lacked it: the checkpoint held the host's state only (weights, α, op states, values),
     *  so a resumed search lost what the plugin kept inside its instance. */
    es_status (*save_state)(void *instance, uint8_t *buffer, uint64_t capacity, uint64_t *length);
    /** Optional (set with save_state): restores a blob save_state wrote, on resume, after create and
     *  after the host has restored its own state (cells, op states, values, weights). The bytes come
     *  from a file: check them (a leading format byte is recommended) and return
     *  ES_ERROR_INVALID_ARGUMENT with a message for a blob you cannot read; never crash. */
    es_status (*load_state)(void *instance, const uint8_t *bytes, uint64_t length);
} es_regularizer_vtable;

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_REGULARIZER_H */
