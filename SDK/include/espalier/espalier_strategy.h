/* espalier_strategy.h — search strategies, and the search services they drive.
 *
 * The host's common trainer owns the loop, the data, the optimisers and the memory accountant.
 * Each step it asks the strategy what the step does (`plan_step`); around steps and epochs it
 * calls the strategy's hooks, in which the strategy changes the search through
 * `host->search` (non-NULL during a search): mask or remove ops, read and shift architecture
 * parameters, set named scalars (temperatures, λ), grow the network, ask the accountant what a
 * change would cost before making it, score the supernet forward-only, train a sampled child.
 * At the end `derive` writes the found architecture as JSON.
 * Thread rule: host thread, one call at a time. Search services are valid during strategy calls.
 */
#ifndef ESPALIER_STRATEGY_H
#define ESPALIER_STRATEGY_H

#include "espalier_host.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- What a step does ---- */

typedef int32_t es_step_mode;
#define ES_STEP_BILEVEL        1  /* architecture step on a validation batch, then weight step on a training batch */
#define ES_STEP_SINGLE_LEVEL   2  /* weights and architecture updated from the same training batch */
#define ES_STEP_WEIGHTS_ONLY   3  /* weight step only (warm-up; architecture frozen) */
#define ES_STEP_FORWARD_ONLY   4  /* forward without gradients (scoring) */
#define ES_STEP_SKIP           5  /* nothing: the strategy did its own work through the services */

typedef struct es_step_plan {
    uint32_t struct_size;
    es_step_mode mode;
    int32_t second_order;   /* bilevel: unrolled (second-order) architecture gradient */
    int32_t reserved;
    double arch_lr_scale;   /* multiplies the architecture learning rate this step (1 = as configured) */
} es_step_plan;

typedef struct es_epoch_metrics {
    uint32_t struct_size;
    uint32_t reserved;
    double train_loss, train_accuracy;
    double valid_loss, valid_accuracy;
    double seconds;
    uint64_t peak_bytes;
} es_epoch_metrics;

/* ---- The search services (host->search) ---- */

/** The shape of the search space now, as `space_info` writes it. The indices the other services
 *  take range over these counts: cell_type in [0, cell_types), edge in [0, edges), op in
 *  [0, ops) (op i is `op_name(i)`). They change only when the strategy calls `grow` (cells, and
 *  cell_types in the hyper-connected space): ask again after growing. */
typedef struct es_space_info {
    uint32_t struct_size;
    int32_t cell_types;      /* 2: type 0 normal, 1 reduce (even with no reduction cell); = cells if hyper_connected */
    int32_t edges;           /* per cell */
    int32_t ops;             /* candidates per edge */
    int32_t nodes;           /* intermediate nodes per cell */
    int32_t cells;           /* cells in the network now */
    /* Since ABI 1.2 (read only if struct_size covers it): 1 = the hyper-connected space.
     * Then every cell is distinct: cell_types = cells, cell type t IS cell t (its own logits, op
     * states), and cell t sums its inter-cell inputs (stem and cells 0..t-2; cell 0: the stem),
     * each gated by its own logit (input_view, set_input_state). First user: Bonsai-Net. Beyond
     * it: any strategy that handles cell_types > 2 searches each cell's ops on its own there, and
     * any method that weights or prunes the connections between cells uses the input services. */
    int32_t hyper_connected;
} es_space_info;

/** A candidate's state (set_op_state) or an inter-cell input's (set_input_state). */
typedef int32_t es_op_state;
#define ES_OP_ACTIVE   0  /* runs, mixed by the gate */
#define ES_OP_MASKED   1  /* not run, no activations; logit −∞ at the gate (weight 0, no gradient); may be made active again */
#define ES_OP_REMOVED  2  /* gone for good: its op instances are dropped (destroy), its parameters and optimiser state freed */

/** The search services: `host->search`, set up after every component of the search is created
 *  (never use it in `create`). Every function takes `host->host` first and is called on the host
 *  thread from a component's call during the search (a strategy's hooks above all); once the
 *  search is over they return ES_ERROR_UNSUPPORTED with a message (op_name: NULL). Check
 *  `struct_size` before calling a field added after 1.0. */
typedef struct es_search_services {
    uint32_t struct_size;
    /** Writes the space's current shape into `*out` (the caller's struct; NULL:
     *  ES_ERROR_INVALID_ARGUMENT). Set out->struct_size = sizeof(es_space_info) before the call.
     *  The host writes no more than the caller's struct_size covers (a plugin built for 1.0 or
     *  1.1 gets no hyper_connected; 0 is read as the 1.0 size; a size below that is
     *  ES_ERROR_INVALID_ARGUMENT) and sets struct_size to what it wrote. With a non-NULL `out` it does not fail during a
     *  search; it is cheap: call it whenever you need the counts rather than keep them across
     *  `grow`. */
    es_status (*space_info)(void *host, es_space_info *out);
    /** The id of candidate op `index` (static string, valid for the process). */
    const char *(*op_name)(void *host, int32_t index);
    /** Architecture logits of a cell type, (edges, ops), and their gradient; writable. */
    es_status (*arch_view)(void *host, int32_t cell_type, es_tensor_view *logits, es_tensor_view *grad);
    /** Sets candidate `op` of edge `edge` to `state` in every cell of type `cell_type` (indices as
     *  in es_space_info). It takes effect from the next forward pass on (the current step's, when
     *  called from plan_step). ES_OP_MASKED and back to ES_OP_ACTIVE may alternate freely;
     *  ES_OP_REMOVED is final: the host drops the candidate's op instances (destroy) and frees
     *  their parameters and optimiser state, and any later state but ES_OP_REMOVED is refused. Returns
     *  ES_ERROR_INVALID_ARGUMENT, with a message, for an index out of range, an unknown state, or
     *  a removed candidate made masked or active. In a memory prediction (state->dry_run = 1) the
     *  choice rests on values a dry run does not have, so the host records what was set (that is
     *  what get_op_state answers) but applies the same counts per edge to the candidates whose
     *  loss saves the least memory: the prediction bounds whichever candidates the real run drops. */
    es_status (*set_op_state)(void *host, int32_t cell_type, int32_t edge, int32_t op, es_op_state state);
    /** Writes the state of candidate `op` of edge `edge` of cell type `cell_type` into `*state`:
     *  ES_OP_ACTIVE unless set_op_state (or the checkpoint a search resumed from) changed it; in a
     *  memory prediction, what set_op_state recorded.
     *  ES_ERROR_INVALID_ARGUMENT for an index out of range or a NULL `state`. */
    es_status (*get_op_state)(void *host, int32_t cell_type, int32_t edge, int32_t op, es_op_state *state);
    /** Named scalars of the run's components: "gate.tau", "regularizer.lambda", "drop_path", … */
    es_status (*set_value)(void *host, const char *name, double value);
    es_status (*get_value)(void *host, const char *name, double *value);
    /** Adds `cells` cells (a section) to the network, or sets the cell count (progressive stages). */
    es_status (*grow)(void *host, int32_t cells);
    /** The accountant's predicted peak of one step after the change described by `change_json`
     *  (e.g. {"cells":11,"batch":64,"partial_channels":4}; "{}" = as now), computed by a dry run. */
    es_status (*predict_peak)(void *host, const char *change_json, es_memory_report *out);
    /** Forward only, no gradients, on `batches` training batches with weights re-initialised from
     *  `init_seed` (the same seed gives the same weights). The caller provides `logits` with rank 2,
     *  shape (batches·batch, classes) and data for that many floats (e.g. from `host->alloc`); the
     *  host checks the shape (ES_ERROR_SHAPE, with the expected shape in the message) and fills it. */
    es_status (*forward_logits)(void *host, int32_t batches, uint64_t init_seed, es_tensor_view *logits);
    /** Trains the child architecture `arch_json` (genotype format, as `derive` writes it) for
     *  `steps` (>= 1) SGD steps from scratch at the run's channels, cells, batch size and learning
     *  rate (cosine over the steps) on the weight-training half, and reports its accuracy on the
     *  validation half. The child is freed before returning; its memory is counted under owner
     *  "child". The same architecture gives the same accuracy (weights seeded from the run's seed
     *  and the architecture). Bad JSON, a malformed cell or an op that no loaded plugin provides:
     *  ES_ERROR_INVALID_ARGUMENT with the reason. Dry run: one step, accuracy 0. */
    es_status (*train_child)(void *host, const char *arch_json, int64_t steps, double *valid_accuracy);

    /* ---- Since ABI 1.1: call only if struct_size covers the field ---- */

    /** The mean cross-entropy of the supernet in its CURRENT op states (masked and removed ops do
     *  not run; the gate mixes the active ones) on one of the current step's batches: `which` = 0
     *  the step's training batch, 1 its validation batch. `backward` = 0: forward only, no tape
     *  (the memory of one forward pass of the active ops); 1: also accumulates dL/dweights into the
     *  weight gradients (the host's own weight step zeroes them before its backward). `*samples`
     *  (may be NULL) receives the batch size N, so that N*loss is the batch's negative
     *  log-likelihood. Callable from plan_step and after_step; elsewhere ES_ERROR_UNSUPPORTED
     *  (there is no step batch). In a dry run it allocates as a real call and reports loss 0.
     *  Why 1.0 lacked it: a 1.0 strategy could only say what the trainer does with a step's
     *  batches (bilevel, single-level, ...), never look at a loss itself. PARSEC needs the loss of
     *  several sampled children on ONE batch (their likelihoods give the importance weights)
     *  before the step's weight update, which no step mode expresses. */
    es_status (*batch_loss)(void *host, int32_t which, int32_t backward, double *loss, int64_t *samples);

    /* ---- Since ABI 1.2: call only if struct_size covers the field ---- */

    /** Hyper-connected space (es_space_info.hyper_connected): the logits of cell `cell`'s
     *  inter-cell inputs, (inputs, 1) — input j is the stem (j = 0) or cell j-1 — and their
     *  gradient; writable, like arch_view. Elsewhere ES_ERROR_UNSUPPORTED.
     *  Why 1.1 lacked it: the DARTS spaces have no gated connections between cells; Bonsai-Net
     *  prunes them (and deadheads them) as it prunes ops, so a strategy must read, write and
     *  remove their pruner weights, which arch_view (edges x ops per cell type) cannot address. */
    es_status (*input_view)(void *host, int32_t cell, es_tensor_view *logits, es_tensor_view *grad);
    /** Masks, restores or removes (frees its preprocessing) inter-cell input `input` of `cell`. */
    es_status (*set_input_state)(void *host, int32_t cell, int32_t input, es_op_state state);
    es_status (*get_input_state)(void *host, int32_t cell, int32_t input, es_op_state *state);

    /* ---- Since ABI 1.4: call only if struct_size covers the field ---- */

    /** This process's rank and the number of ranks of a data-parallel search (mpirun -np N): 0
     *  and 1 in one process. Every rank runs the same plugin calls with the same inputs (its share
     *  of each batch aside), so a strategy never needs them for correctness; one that does work
     *  of its own outside the trainer (training children, scoring samples) may split that work
     *  over the ranks and combine the results with sum_over_ranks.
     *  Why 1.3 lacked it: searches ran in one process. */
    es_status (*ranks)(void *host, int32_t *rank, int32_t *world_size);
    /** Sums `count` doubles over every rank, in place. Collective: every rank must call it, with
     *  the same count, at the same point of the run (a rank that skips it stalls the others). In
     *  one process it returns the values unchanged. */
    es_status (*sum_over_ranks)(void *host, double *values, int64_t count);
} es_search_services;

/* ---- The strategy component ---- */

/** What a strategy needs from the other components (es_strategy_vtable.requires); the host
 *  refuses combinations that do not provide it, with a message saying why. */
#define ES_REQUIRES_ARCH_PARAMS     1u  /* a gate over architecture logits */
#define ES_REQUIRES_SAMPLED_GATE    2u
#define ES_REQUIRES_HARD_GATE       4u
#define ES_REQUIRES_NO_ARCH_PARAMS  8u  /* works on weights alone (GSparsity) */

typedef struct es_strategy_vtable {
    uint32_t struct_size;
    uint32_t requires;

    /** Required. Makes the search's strategy instance. Called by the host on the host thread once per
     *  search, after the network and its gates are made and before the first step and any other call on
     *  the instance. A memory prediction (a dry run: `espalier search` predicts its peak before it
     *  starts, and `predict_peak` predicts during a search) makes its own instance beside the real
     *  run's, so keep no state outside the instance. `component`: this component's static descriptor
     *  (its `user_data` is yours). `host`: the services table, valid until `destroy`; keep the pointer
     *  and read `host->host` at each call. Do not use `host->search` here: the search services are set
     *  up after every component is created, for the hooks (epoch_begin, plan_step, …). `params` (the
     *  component's parameters in declaration order, resolved and checked by the host): owned by the
     *  host, valid during this call only. `*instance` is NULL on entry. Memory from `host->alloc` here
     *  is counted under the owner "strategy". Do not call `declare_param` (it returns ES_ERROR_UNSUPPORTED): only
     *  an op's parameters are kept, trained and checkpointed; keep your own state in the instance and save it with save_state.
     *  Returns ES_OK with `*instance` set to the new instance (the host passes it, even NULL, to every
     *  later call), or an error with `host->set_error` called (the search does not start): then the
     *  host ignores `*instance` and never calls `destroy`, so free what you made before returning. */
    es_status (*create)(const es_component_desc *component, const es_host_services *host, const es_param_value *params,
                        uint32_t param_count, void **instance);
    /** Required. Frees the instance: called exactly once for each create that returned ES_OK, with
     *  the pointer it wrote (which may be NULL), on the host thread, when the host drops the
     *  search or prediction that made it (after `derive`, for a search that ends). No call on the
     *  instance follows. Release what the instance holds: `host->free` what it allocated through
     *  `host->alloc`, then its own memory. A process that is killed never calls it, and an
     *  interrupted search is resumed from the checkpoint (save_state): keep nothing here but
     *  freeing — write results in epoch_end or derive. */
    void (*destroy)(void *instance);

    /** Required: fills `plan` for the step described by `state`. */
    es_status (*plan_step)(void *instance, const es_run_state *state, es_step_plan *plan);
    /** Optional hooks. */
    es_status (*after_step)(void *instance, const es_run_state *state);
    es_status (*epoch_begin)(void *instance, const es_run_state *state);
    /** Set *stop = 1 to end the search after this epoch. */
    es_status (*epoch_end)(void *instance, const es_run_state *state, const es_epoch_metrics *metrics, int32_t *stop);
    /** Optional: writes the architecture as UTF-8 JSON into buffer (capacity bytes, NUL-terminated)
     *  and its length to *length; if capacity is too small, returns ES_ERROR_INVALID_ARGUMENT with
     *  *length = the bytes needed. NULL = the host derives with the DARTS rule. */
    es_status (*derive)(void *instance, const es_run_state *state, char *buffer, uint64_t capacity, uint64_t *length);

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
} es_strategy_vtable;

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_STRATEGY_H */
