/* espalier_op.h — ops: candidate operations on an edge of the search space.
 *
 * An op comes in one of two forms, chosen by which pointers are non-NULL:
 *   composed  `build` appends host primitives to a graph; the host differentiates them, counts
 *             their memory and runs them in dry runs. Most ops (the DARTS set) are composed.
 *   raw       `output_shape` + `forward` + `backward`: the plugin's own kernels on plain buffers.
 *             The host allocates every buffer through its accountant, keeps what `saves` names
 *             alive for backward, and never calls `forward`/`backward` in a dry run.
 * Parameters of either form are declared with `host->declare_param` in `create`.
 * Thread rule: every function is called on the host thread, one call at a time per instance.
 *
 * Gradient convention (raw ops): `backward` OVERWRITES d_input — the host hands it uninitialised
 * memory, so write every element, zeros included — and ADDS into each d_params[i], which is the
 * parameter's own gradient buffer, accumulating over every use of the parameter in the step.
 * This differs from gates and regularizers, which ADD into all their gradients
 * (espalier_gate.h, espalier_regularizer.h). Composed ops write no backward: the host
 * differentiates the primitives they build.
 */
#ifndef ESPALIER_OP_H
#define ESPALIER_OP_H

#include "espalier_host.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Where an op instance sits. */
typedef struct es_op_config {
    uint32_t struct_size;
    int32_t stride;          /* 1, or 2 on the edges of a reduction cell that leave its inputs */
    int64_t in_channels;
    int64_t out_channels;
    int32_t affine;          /* batch norm with learnable scale/shift (0 during search) */
    int32_t reserved;
    const char *owner;       /* the instance's owner path, e.g. "cell3/edge7/sep_conv_5x5" */
} es_op_config;

/** What a raw op's backward reads, so the host keeps it alive (bit flags). */
#define ES_OP_SAVES_INPUT   1u
#define ES_OP_SAVES_OUTPUT  2u

/** es_op_vtable.flags (ABI 1.7), bit flags. */
/** Raw ops: `forward` may be called again on the same input, parameters and state during the
 *  step, and gives the same output bit for bit (no randomness of its own, no state it changes):
 *  the host may then drop the activations around it and recompute them in backward
 *  (`--recompute`). An op that does not set it is never run twice; the segment holding it keeps
 *  everything (the accountant counts it as stored). Composed ops are always recomputable: the
 *  host replays their primitives. */
#define ES_OP_RECOMPUTABLE  1u

typedef struct es_op_vtable {
    uint32_t struct_size;
    uint32_t saves;  /* raw ops: ES_OP_SAVES_* */

    /** Makes an instance. `component` is this component's descriptor (for its user_data). `params` are the component's parameters in declaration order, resolved
     *  and checked by the host (valid during the call). Declare learnable tensors here.
     *  On error set the message and return non-OK; `*instance` is then ignored. */
    es_status (*create)(const es_component_desc *component, const es_host_services *host, const es_op_config *config,
                        const es_param_value *params, uint32_t param_count, void **instance);
    /** Required. Frees the instance: called exactly once for each create that returned ES_OK, with the
     *  pointer it wrote to *instance (NULL only if create wrote NULL), on the host thread, when the
     *  host drops the op: at the end of the run that made it, or when a strategy removes the candidate
     *  (ES_OP_REMOVED). Never called after a failed create. No call on the instance follows. The
     *  parameters it declared are the host's: do not free them. */
    void (*destroy)(void *instance);

    /* ---- composed form ---- */

    /** Appends the op to `graph`: `*output` = op(input). Values and parameters come from the
     *  host's graph functions. NULL for raw ops. */
    es_status (*build)(void *instance, es_graph graph, es_value input, es_value *output);

    /* ---- raw form (all three, or none) ---- */

    /** Sets output->rank and output->shape for `input` (data is NULL in both). */
    es_status (*output_shape)(void *instance, const es_tensor_view *input, es_tensor_view *output);
    /** output = op(input). `params` are views of the declared parameters in declaration order. */
    es_status (*forward)(void *instance, const es_run_state *state, const es_tensor_view *input,
                         const es_tensor_view *params, uint32_t param_count, es_tensor_view *output);
    /** OVERWRITES d_input (skip if its data is NULL) and ADDS into each d_params[i] (skip those
     *  with NULL data): see the gradient convention above. `input`/`output` have data only if
     *  `saves` asked for them. Never called in a dry run. */
    es_status (*backward)(void *instance, const es_run_state *state, const es_tensor_view *input,
                          const es_tensor_view *output, const es_tensor_view *d_output,
                          const es_tensor_view *params, uint32_t param_count,
                          es_tensor_view *d_input, es_tensor_view *d_params);

    /** Optional: multiply-adds × 2 of one forward on `input` (cost-aware methods). */
    es_status (*flops)(void *instance, const es_tensor_view *input, uint64_t *flops);

    /** Optional, composed ops that stand for several candidates at once (MergeNAS's merged
     *  convolution): like `build`, but also receives the edge's mixing weights for the candidates
     *  this op covers (`weights`, a value of shape (k), differentiable) and applies them itself;
     *  the host then does not scale the op's output. First user: MergeNAS. Beyond it: any op whose
     *  candidates share weights or work (kernel sizes cut from one superkernel, widths as slices
     *  of one convolution) can mix them inside one computation instead of running k ops. */
    es_status (*build_mixed)(void *instance, es_graph graph, es_value input, es_value weights, es_value *output);

    /* ---- ABI 1.7 ---- */

    /** ES_OP_* flags (ES_OP_RECOMPUTABLE); 0 from plugins built before 1.7. */
    uint32_t flags;
} es_op_vtable;

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_OP_H */
