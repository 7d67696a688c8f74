/* fixture.c — test plugins for the loader, one defect per -D flag (see PluginTestSupport.swift).
 * With no flag: a well-formed library with a composed op (ReLU → 1×1 conv, built from host
 * primitives), a gate (scaled identity with a straight-through-style backward), a regularizer
 * (L2 with a proximal shrink) and a strategy, so the host's adapters can be tested end to end.
 *   -DFIX_ID=...           component id prefix (for duplicate-id tests)
 *   -DFIX_MAJOR=2          built for another ABI major
 *   -DFIX_MINOR=n          built for ABI 1.n
 *   -DFIX_NO_ENTRY         exports no entry symbol
 *   -DFIX_ENTRY_NULL       the entry refuses the host (returns NULL)
 *   -DFIX_INIT_FAILS       init returns an error with a message
 *   -DFIX_BAD_KIND         a component of kind 99
 *   -DFIX_NULL_ID          a component without id
 *   -DFIX_BAD_DEFAULT      a parameter whose default does not parse
 *   -DFIX_BAD_SIGNATURE    a dynamic method with a malformed signature
 *   -DFIX_SMALL_STRUCT     a component whose struct_size is 0
 *   -DFIX_GATE_CRASH_STEP=n the gate writes through a null pointer in its forward at training step n
 *   -DFIX_GATE_HANG_STEP=n  the gate's forward never returns at training step n
 *   -DFIX_MASKED_CONV      adds op .op.masked-conv/1: y = conv1x1(relu(channel_mask(bn(conv1x1 stride s(x, proj.weight))))), a channel-masked op
 *                          of a third party (its own names: proj.weight, keep.logits)
 *   -DFIX_GATE_DECLARES    the gate's create declares a parameter (refused: only an op's create may) and fails with that status
 *   -DFIX_SPACE_INFO_1_1   the pruner asks space_info with a struct laid out as ABI 1.1 (no hyper_connected)
 *                          and a canary right after it; the run fails if the host writes past the struct
 *   -DFIX_UNSTABLE_BUILD   adds op .op.unstable/1, whose build changes after its first (ReLU, then ReLU and scale)
 *   -DFIX_READS_OUTPUT=n   adds op .op.bn-reader/1: y = batch_norm(relu(x)) (no affine map), which reads
 *                          y's data (value_view) in its builds from the n-th on (1: every build)
 *   -DFIX_CROP_READERS     adds op .op.crop-readers/1: c = crop(x, top 1, left 1), y = conv2d(c, w) + c
 *                          (3×3, padding 1): a crop a convolution reads and an add reads too
 *   -DFIX_GATE_INPUTS      the gate also gates inter-cell inputs (ES_GATE_INPUTS), so it can
 *                          serve the hyper-connected space
 *   -DFIX_TABLES_1_2       strategy and regularizer tables as ABI 1.2 laid them out (struct_size up
 *                          to, not including, save_state); build with FIX_MINOR=2
 *   -DFIX_TABLES_1_6       op tables as ABI 1.6 laid them out (struct_size up to, not including,
 *                          flags); build with FIX_MINOR=6
 *   -DFIX_DESC_1_4         component descriptions as ABI 1.4 laid them out (struct_size up to, not
 *                          including, method); build with FIX_MINOR=4
 * The warm-up strategy keeps state (ABI 1.3): the epochs it has ended, saved as 9 bytes, format 1,
 * and brings the search method "fixture-warmup" (ABI 1.5): its gate, its regularizer and settings.
 */
#include <espalier/espalier.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FIX_ID
#define FIX_ID "org.fixture"
#endif
#ifndef FIX_MAJOR
#define FIX_MAJOR ESPALIER_ABI_MAJOR
#endif
#ifndef FIX_MINOR
#define FIX_MINOR ESPALIER_ABI_MINOR
#endif
#ifdef FIX_TABLES_1_2
#define FIX_STRATEGY_TABLE_SIZE offsetof(es_strategy_vtable, save_state)
#define FIX_REGULARIZER_TABLE_SIZE offsetof(es_regularizer_vtable, save_state)
#else
#define FIX_STRATEGY_TABLE_SIZE sizeof(es_strategy_vtable)
#define FIX_REGULARIZER_TABLE_SIZE sizeof(es_regularizer_vtable)
#endif
#ifdef FIX_TABLES_1_6
#define FIX_OP_TABLE_SIZE offsetof(es_op_vtable, flags)
#else
#define FIX_OP_TABLE_SIZE sizeof(es_op_vtable)
#endif
#ifdef FIX_DESC_1_4
#define FIX_DESC_SIZE offsetof(es_component_desc, method)
#else
#define FIX_DESC_SIZE sizeof(es_component_desc)
#endif

/* ---- composed op: y = conv1x1(relu(x), w) ---- */
typedef struct { const es_host_services *host; es_param w; } comp_op;

static es_status op_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                           const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)params; (void)n;
    comp_op *o = calloc(1, sizeof *o);
    o->host = host;
    int64_t shape[4] = { cfg->out_channels, cfg->in_channels, 1, 1 };
    es_status st = host->declare_param(host->host, "weight", shape, 4, ES_INIT_UNIFORM_FAN_IN, (double)cfg->in_channels, 0, &o->w);
    if (st != ES_OK) { free(o); return st; }
    *inst = o;
    return ES_OK;
}
static void op_destroy(void *inst) { free(inst); }
static es_status op_build(void *inst, es_graph g, es_value x, es_value *out) {
    comp_op *o = inst;
    const es_host_services *h = o->host;
    es_value r, w, y;
    es_status st = h->graph_apply(h->host, g, "relu", &x, 1, NULL, 0, &r);
    if (st != ES_OK) return st;
    if ((st = h->graph_param(h->host, g, o->w, &w)) != ES_OK) return st;
    es_value in[2] = { r, w };
    es_attr attrs[1] = { { "stride", 1 } };
    if ((st = h->graph_apply(h->host, g, "conv2d", in, 2, attrs, 1, &y)) != ES_OK) return st;
    *out = y;
    return ES_OK;
}
static const es_op_vtable op_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = op_create, .destroy = op_destroy, .build = op_build };

/* ---- composed op with a channel gate: y = channel_scale(relu(x), gate("channel", logits)) ---- */
typedef struct { const es_host_services *host; es_param logits; } masked_op;
static es_status masked_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                               const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)params; (void)n;
    masked_op *o = calloc(1, sizeof *o);
    o->host = host;
    int64_t shape[2] = { cfg->in_channels, 1 };
    es_status st = host->declare_param(host->host, "mask_logits", shape, 2, ES_INIT_CONSTANT, 0.5, ES_PARAM_FLAG_ARCH, &o->logits);
    if (st != ES_OK) { free(o); return st; }
    *inst = o;
    return ES_OK;
}
static es_status masked_build(void *inst, es_graph g, es_value x, es_value *out) {
    masked_op *o = inst;
    const es_host_services *h = o->host;
    es_value r, l, w, in[2];
    es_status st;
    if ((st = h->graph_apply(h->host, g, "relu", &x, 1, NULL, 0, &r)) != ES_OK) return st;
    if ((st = h->graph_param(h->host, g, o->logits, &l)) != ES_OK) return st;
    if ((st = h->graph_gate(h->host, g, "channel", l, &w)) != ES_OK) return st;
    in[0] = r; in[1] = w;
    return h->graph_apply(h->host, g, "channel_scale", in, 2, NULL, 0, out);
}
static const es_op_vtable masked_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = masked_create, .destroy = op_destroy, .build = masked_build };

/* ---- merged op (MergeNAS-style): y = w0·x + w1·relu(x), the edge's weights applied by the op ---- */
typedef struct { const es_host_services *host; } merged_op;
static es_status merged_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                               const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)cfg; (void)params; (void)n;
    merged_op *o = calloc(1, sizeof *o);
    o->host = host;
    *inst = o;
    return ES_OK;
}
static es_status merged_build(void *inst, es_graph g, es_value x, es_value *out) {
    merged_op *o = inst;
    return o->host->graph_apply(o->host->host, g, "relu", &x, 1, NULL, 0, out);
}
static es_status merged_build_mixed(void *inst, es_graph g, es_value x, es_value weights, es_value *out) {
    merged_op *o = inst;
    const es_host_services *h = o->host;
    es_value r, in[3];
    es_status st;
    if ((st = h->graph_apply(h->host, g, "relu", &x, 1, NULL, 0, &r)) != ES_OK) return st;
    in[0] = x; in[1] = r; in[2] = weights;
    return h->graph_apply(h->host, g, "weighted_sum", in, 3, NULL, 0, out);
}
static const es_op_vtable merged_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = merged_create, .destroy = op_destroy,
    .build = merged_build, .build_mixed = merged_build_mixed };

#ifdef FIX_MASKED_CONV
/* ---- a third party's channel-masked op, written from SDK/ alone (ABI 1.6):
 *      y = conv1x1(relu(channel_mask(bn(conv1x1 stride s(x, proj.weight)), keep.logits)), out.weight)
 *      proj: C_in → M, out: M → C_out, M = the width the host gives the mask "keep.logits" (C_out
 *      when searched; in an exported network the kept width, and then no mask) ---- */
typedef struct { const es_host_services *host; es_param w, mean, var, logits, w2; int stride, masked; } masked_conv_op;
static es_status masked_conv_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                                    const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)params; (void)n;
    int64_t m = cfg->out_channels;
    int32_t searched = 1;
    es_status st = ES_OK;
    if (host->struct_size >= offsetof(es_host_services, channel_width) + sizeof host->channel_width && host->channel_width)
        st = host->channel_width(host->host, "keep.logits", cfg->out_channels, &m, &searched);
    if (st != ES_OK) return st;
    masked_conv_op *o = calloc(1, sizeof *o);
    o->host = host;
    o->stride = cfg->stride;
    o->masked = searched;
    int64_t w[4] = { m, cfg->in_channels, 1, 1 }, c[1] = { m }, l[2] = { m, 1 }, w2[4] = { cfg->out_channels, m, 1, 1 };
    st = host->declare_param(host->host, "proj.weight", w, 4, ES_INIT_UNIFORM_FAN_IN, (double)cfg->in_channels, 0, &o->w);
    if (st == ES_OK) st = host->declare_param(host->host, "norm.running_mean", c, 1, ES_INIT_ZEROS, 0, ES_PARAM_FLAG_BUFFER, &o->mean);
    if (st == ES_OK) st = host->declare_param(host->host, "norm.running_var", c, 1, ES_INIT_ONES, 0, ES_PARAM_FLAG_BUFFER, &o->var);
    if (st == ES_OK && searched) st = host->declare_param(host->host, "keep.logits", l, 2, ES_INIT_CONSTANT, 2.0, ES_PARAM_FLAG_ARCH, &o->logits);
    if (st == ES_OK) st = host->declare_param(host->host, "out.weight", w2, 4, ES_INIT_UNIFORM_FAN_IN, (double)m, 0, &o->w2);
    if (st != ES_OK) { free(o); return st; }
    *inst = o;
    return ES_OK;
}
static es_status masked_conv_build(void *inst, es_graph g, es_value x, es_value *out) {
    masked_conv_op *o = inst;
    const es_host_services *h = o->host;
    es_value w, y, m, v, bn, l, r, w2, in[3];
    es_status st;
    es_attr attrs[1] = { { "stride", o->stride } };
    if ((st = h->graph_param(h->host, g, o->w, &w)) != ES_OK) return st;
    in[0] = x; in[1] = w;
    if ((st = h->graph_apply(h->host, g, "conv2d", in, 2, attrs, 1, &y)) != ES_OK) return st;
    if ((st = h->graph_param(h->host, g, o->mean, &m)) != ES_OK) return st;
    if ((st = h->graph_param(h->host, g, o->var, &v)) != ES_OK) return st;
    in[0] = y; in[1] = m; in[2] = v;
    if ((st = h->graph_apply(h->host, g, "batch_norm", in, 3, NULL, 0, &bn)) != ES_OK) return st;
    if (o->masked) {
        if ((st = h->graph_param(h->host, g, o->logits, &l)) != ES_OK) return st;
        in[0] = bn; in[1] = l;
        if ((st = h->graph_apply(h->host, g, "channel_mask", in, 2, NULL, 0, &bn)) != ES_OK) return st;
    }
    if ((st = h->graph_apply(h->host, g, "relu", &bn, 1, NULL, 0, &r)) != ES_OK) return st;
    if ((st = h->graph_param(h->host, g, o->w2, &w2)) != ES_OK) return st;
    in[0] = r; in[1] = w2;
    return h->graph_apply(h->host, g, "conv2d", in, 2, NULL, 0, out);
}
static const es_op_vtable masked_conv_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = masked_conv_create, .destroy = op_destroy, .build = masked_conv_build };
#endif

#ifdef FIX_UNSTABLE_BUILD
/* ---- composed op whose build depends on how often it was built: relu, then relu(relu(x)) ---- */
typedef struct { const es_host_services *host; int builds; } unstable_op;
static es_status unstable_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                                 const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)cfg; (void)params; (void)n;
    unstable_op *o = calloc(1, sizeof *o);
    o->host = host;
    *inst = o;
    return ES_OK;
}
static es_status unstable_build(void *inst, es_graph g, es_value x, es_value *out) {
    unstable_op *o = inst;
    const es_host_services *h = o->host;
    es_value r;
    es_status st = h->graph_apply(h->host, g, "relu", &x, 1, NULL, 0, &r);
    if (st != ES_OK || o->builds++ == 0) { *out = r; return st; }
    return h->graph_apply(h->host, g, "scale", &r, 1, NULL, 0, out);
}
static const es_op_vtable unstable_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = unstable_create, .destroy = op_destroy, .build = unstable_build };
#endif

#ifdef FIX_READS_OUTPUT
/* ---- composed op ending in a batch norm whose output it reads: y = batch_norm(relu(x)), then value_view(y) ---- */
typedef struct { const es_host_services *host; es_param mean, var; int builds; } reader_op;
static es_status reader_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                               const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)params; (void)n;
    reader_op *o = calloc(1, sizeof *o);
    o->host = host;
    int64_t c[1] = { cfg->in_channels };
    es_status st = host->declare_param(host->host, "norm.running_mean", c, 1, ES_INIT_ZEROS, 0, ES_PARAM_FLAG_BUFFER, &o->mean);
    if (st == ES_OK) st = host->declare_param(host->host, "norm.running_var", c, 1, ES_INIT_ONES, 0, ES_PARAM_FLAG_BUFFER, &o->var);
    if (st != ES_OK) { free(o); return st; }
    *inst = o;
    return ES_OK;
}
static es_status reader_build(void *inst, es_graph g, es_value x, es_value *out) {
    reader_op *o = inst;
    const es_host_services *h = o->host;
    es_value r, m, v, in[3];
    es_status st = h->graph_apply(h->host, g, "relu", &x, 1, NULL, 0, &r);
    if (st == ES_OK) st = h->graph_param(h->host, g, o->mean, &m);
    if (st == ES_OK) st = h->graph_param(h->host, g, o->var, &v);
    in[0] = r; in[1] = m; in[2] = v;
    if (st == ES_OK) st = h->graph_apply(h->host, g, "batch_norm", in, 3, NULL, 0, out);
    if (st != ES_OK || ++o->builds < FIX_READS_OUTPUT) return st;
    es_tensor_view view;
    return h->value_view(h->host, *out, &view);
}
static const es_op_vtable reader_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = reader_create, .destroy = op_destroy, .build = reader_build };
#endif

#ifdef FIX_CROP_READERS
/* ---- composed op: c = crop(x, top 1, left 1); y = conv2d(c, w){3×3, padding 1} + c ---- */
typedef struct { const es_host_services *host; es_param w; } crop_op;
static es_status crop_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                             const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)params; (void)n;
    crop_op *o = calloc(1, sizeof *o);
    o->host = host;
    int64_t shape[4] = { cfg->out_channels, cfg->in_channels, 3, 3 };
    es_status st = host->declare_param(host->host, "conv.weight", shape, 4, ES_INIT_UNIFORM_FAN_IN, (double)(cfg->in_channels * 9), 0, &o->w);
    if (st != ES_OK) { free(o); return st; }
    *inst = o;
    return ES_OK;
}
static es_status crop_build(void *inst, es_graph g, es_value x, es_value *out) {
    crop_op *o = inst;
    const es_host_services *h = o->host;
    es_value c, w, a, in[2];
    const es_attr crop_attrs[2] = { { "top", 1 }, { "left", 1 } };
    const es_attr conv_attrs[1] = { { "padding", 1 } };
    es_status st = h->graph_apply(h->host, g, "crop", &x, 1, crop_attrs, 2, &c);
    if (st == ES_OK) st = h->graph_param(h->host, g, o->w, &w);
    in[0] = c; in[1] = w;
    if (st == ES_OK) st = h->graph_apply(h->host, g, "conv2d", in, 2, conv_attrs, 1, &a);
    in[0] = a; in[1] = c;
    if (st == ES_OK) st = h->graph_apply(h->host, g, "add", in, 2, NULL, 0, out);
    return st;
}
static const es_op_vtable crop_table = { .struct_size = FIX_OP_TABLE_SIZE, .create = crop_create, .destroy = op_destroy, .build = crop_build };
#endif

/* ---- gate: weights = scale · logits; backward d_logits += scale · d_weights ---- */
typedef struct { double scale; } lin_gate;
static es_status gate_create(const es_component_desc *component, const es_host_services *host, const es_gate_config *cfg,
                             const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)host; (void)cfg; (void)n;
#ifdef FIX_GATE_DECLARES
    es_param p;
    int64_t shape[1] = { 1 };
    es_status st = host->declare_param(host->host, "temperature", shape, 1, ES_INIT_ONES, 0, 0, &p);
    if (st != ES_OK) return st;
#endif
    lin_gate *g = calloc(1, sizeof *g);
    g->scale = params[0].double_value;
    *inst = g;
    return ES_OK;
}
static void gate_destroy(void *inst) { free(inst); }
static es_status gate_forward(void *inst, const es_run_state *st, const es_tensor_view *l, es_tensor_view *w, uint8_t *active) {
#if defined(FIX_GATE_CRASH_STEP) || defined(FIX_GATE_HANG_STEP)
    if (st->training && !st->dry_run) {
#ifdef FIX_GATE_CRASH_STEP
        if (st->step == FIX_GATE_CRASH_STEP) { volatile int *volatile p = NULL; *p = 1; }
#endif
#ifdef FIX_GATE_HANG_STEP
        if (st->step == FIX_GATE_HANG_STEP) { for (volatile unsigned long i = 0;; i++) {} }
#endif
    }
#endif
    (void)st;
    lin_gate *g = inst;
    int64_t n = l->shape[0] * l->shape[1];
    for (int64_t i = 0; i < n; i++) { w->data[i] = (float)(g->scale * l->data[i]); if (active) active[i] = w->data[i] != 0; }
    return ES_OK;
}
static es_status gate_backward(void *inst, const es_run_state *st, const es_tensor_view *l, const es_tensor_view *w,
                               const es_tensor_view *dw, es_tensor_view *dl) {
    (void)st; (void)w;
    lin_gate *g = inst;
    int64_t n = l->shape[0] * l->shape[1];
    for (int64_t i = 0; i < n; i++) dl->data[i] += (float)(g->scale * dw->data[i]);
    return ES_OK;
}
static es_status gate_set(void *inst, const char *name, double value) {
    if (strcmp(name, "scale") != 0) return ES_ERROR_UNSUPPORTED;
    ((lin_gate *)inst)->scale = value;
    return ES_OK;
}
#ifdef FIX_GATE_INPUTS
#define FIX_GATE_GRANULARITIES ((1u << ES_GATE_OPS) | (1u << ES_GATE_CHANNELS) | (1u << ES_GATE_INPUTS))
#else
#define FIX_GATE_GRANULARITIES ((1u << ES_GATE_OPS) | (1u << ES_GATE_CHANNELS))
#endif
static const es_gate_vtable gate_table = { .struct_size = sizeof(es_gate_vtable), .flags = ES_GATE_HARD,
    .granularities = FIX_GATE_GRANULARITIES, .create = gate_create, .destroy = gate_destroy,
    .forward = gate_forward, .backward = gate_backward, .set_value = gate_set };

/* ---- regularizer: λ/2 Σ v² (loss) and v ← v/(1+λ·lr) (proximal) ---- */
typedef struct { double lambda; } l2_reg;
static es_status reg_create(const es_component_desc *component, const es_host_services *host, const es_param_value *p, uint32_t n, void **inst) {
    (void)component; (void)host; (void)n;
    l2_reg *r = calloc(1, sizeof *r);
    r->lambda = p[0].double_value;
    *inst = r;
    return ES_OK;
}
static void reg_destroy(void *inst) { free(inst); }
static es_status reg_loss(void *inst, const es_run_state *st, es_reg_target *t, uint32_t n, double *loss) {
    (void)st;
    l2_reg *r = inst;
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t p = 0; p < t[i].part_count; p++) {
            const es_tensor_view *v = &t[i].values[p];
            int64_t count = 1;
            for (int k = 0; k < v->rank; k++) count *= v->shape[k];
            for (int64_t j = 0; j < count; j++) {
                s += 0.5 * r->lambda * v->data[j] * v->data[j];
                if (t[i].grads[p].data) t[i].grads[p].data[j] += (float)(r->lambda * v->data[j]);
            }
        }
    *loss = s;
    return ES_OK;
}
static es_status reg_prox(void *inst, const es_run_state *st, es_reg_target *t, uint32_t n, double lr) {
    (void)st;
    l2_reg *r = inst;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t p = 0; p < t[i].part_count; p++) {
            const es_tensor_view *v = &t[i].values[p];
            int64_t count = 1;
            for (int k = 0; k < v->rank; k++) count *= v->shape[k];
            for (int64_t j = 0; j < count; j++) v->data[j] = (float)(v->data[j] / (1 + r->lambda * lr));
        }
    return ES_OK;
}
static const es_regularizer_vtable reg_table = { .struct_size = FIX_REGULARIZER_TABLE_SIZE,
    .targets = (1u << ES_TARGET_ARCH) | (1u << ES_TARGET_WEIGHT_GROUP), .create = reg_create, .destroy = reg_destroy,
    .loss = reg_loss, .proximal = reg_prox };

/* ---- strategy: weights-only for `warmup` steps, then bilevel; stops after `epochs`; counts
 * the epochs it has ended (its saved state: format byte 1, then the count, 8 bytes) ---- */
typedef struct { int64_t warmup, epochs, ended; const es_host_services *host; } simple_strategy;
static es_status strat_create(const es_component_desc *component, const es_host_services *host, const es_param_value *p, uint32_t n, void **inst) {
    (void)component; (void)n;
    simple_strategy *s = calloc(1, sizeof *s);
    s->warmup = p[0].int_value;
    s->epochs = p[1].int_value;
    s->host = host;
    *inst = s;
    return ES_OK;
}
static void strat_destroy(void *inst) { free(inst); }
static es_status strat_plan(void *inst, const es_run_state *st, es_step_plan *plan) {
    simple_strategy *s = inst;
    plan->mode = st->step < s->warmup ? ES_STEP_WEIGHTS_ONLY : ES_STEP_BILEVEL;
    return ES_OK;
}
static es_status strat_epoch_end(void *inst, const es_run_state *st, const es_epoch_metrics *m, int32_t *stop) {
    (void)m;
    ((simple_strategy *)inst)->ended++;
    *stop = st->epoch + 1 >= ((simple_strategy *)inst)->epochs;
    return ES_OK;
}
static es_status strat_derive(void *inst, const es_run_state *st, char *buf, uint64_t cap, uint64_t *len) {
    (void)inst; (void)st;
    const char *json = "{\"fixture\":true}";
    *len = strlen(json);
    if (cap <= *len) return ES_ERROR_INVALID_ARGUMENT;
    memcpy(buf, json, *len + 1);
    return ES_OK;
}
#ifndef FIX_TABLES_1_2
static es_status strat_save(void *inst, uint8_t *buf, uint64_t cap, uint64_t *len) {
    simple_strategy *s = inst;
    *len = 9;
    if (buf == NULL || cap < 9) return ES_ERROR_INVALID_ARGUMENT;
    buf[0] = 1;
    memcpy(buf + 1, &s->ended, 8);
    return ES_OK;
}
static es_status strat_load(void *inst, const uint8_t *bytes, uint64_t len) {
    simple_strategy *s = inst;
    if (len != 9 || bytes[0] != 1) {
        char msg[96];
        snprintf(msg, sizeof msg, "saved state of %llu bytes, format %d; expected 9 bytes, format 1", (unsigned long long)len, len ? bytes[0] : -1);
        s->host->set_error(s->host->host, msg);
        return ES_ERROR_INVALID_ARGUMENT;
    }
    memcpy(&s->ended, bytes + 1, 8);
    return ES_OK;
}
#endif
static const es_strategy_vtable strat_table = { .struct_size = FIX_STRATEGY_TABLE_SIZE, .create = strat_create,
    .destroy = strat_destroy, .plan_step = strat_plan, .epoch_end = strat_epoch_end, .derive = strat_derive,
#ifndef FIX_TABLES_1_2
    .save_state = strat_save, .load_state = strat_load
#endif
};

/* ---- strategy acting through the search services: masks op `mask_op` on every normal edge,
 *      sets the gate's tau, asks for a memory prediction, checks that growing is refused ---- */
typedef struct { const es_host_services *host; int64_t mask_op; } pruner;
static es_status pruner_create(const es_component_desc *component, const es_host_services *host, const es_param_value *p, uint32_t n, void **inst) {
    (void)component; (void)n;
    pruner *s = calloc(1, sizeof *s);
    s->host = host;
    s->mask_op = p[0].int_value;
    *inst = s;
    return ES_OK;
}
static es_status pruner_plan(void *inst, const es_run_state *st, es_step_plan *plan) {
    (void)inst; (void)st;
    plan->mode = ES_STEP_BILEVEL;
    return ES_OK;
}
static es_status pruner_epoch_begin(void *inst, const es_run_state *st) {
    pruner *s = inst;
    const es_host_services *h = s->host;
    const es_search_services *q = h->search;
    (void)st;
    if (!q) { h->set_error(h->host, "no search services"); return ES_ERROR_UNSUPPORTED; }
#ifdef FIX_SPACE_INFO_1_1
    struct { uint32_t struct_size; int32_t cell_types, edges, ops, nodes, cells; int32_t canary; } old =
        { (uint32_t)offsetof(es_space_info, hyper_connected), 0, 0, 0, 0, 0, 0x5eed };
    es_status r = q->space_info(h->host, (es_space_info *)(void *)&old);
    if (r != ES_OK) return r;
    if (old.canary != 0x5eed || old.struct_size != offsetof(es_space_info, hyper_connected)) {
        h->set_error(h->host, "space_info wrote past a struct of ABI 1.1's size");
        return ES_ERROR_INTERNAL;
    }
    es_space_info info = { sizeof(es_space_info), old.cell_types, old.edges, old.ops, old.nodes, old.cells, 0 };
#else
    es_space_info info = { sizeof(es_space_info), 0, 0, 0, 0, 0 };
    es_status r = q->space_info(h->host, &info);
    if (r != ES_OK) return r;
#endif
    es_tensor_view alpha, grad;
    if ((r = q->arch_view(h->host, 0, &alpha, &grad)) != ES_OK) return r;
    if (alpha.rank != 2 || alpha.shape[0] != info.edges || alpha.shape[1] != info.ops) {
        h->set_error(h->host, "arch_view shape does not match space_info");
        return ES_ERROR_INTERNAL;
    }
    for (int32_t e = 0; e < info.edges; e++)
        if ((r = q->set_op_state(h->host, 0, e, (int32_t)s->mask_op, ES_OP_MASKED)) != ES_OK) return r;
    if ((r = q->set_value(h->host, "gate.tau", 2.0)) != ES_OK) return r;
    es_memory_report rep;
    memset(&rep, 0, sizeof rep);
    rep.struct_size = sizeof rep;
    if ((r = q->predict_peak(h->host, "{\"batch\": 2}", &rep)) != ES_OK) return r;
    char line[128];
    snprintf(line, sizeof line, "predicted peak %llu with %d ops named %s", (unsigned long long)rep.peak_total, info.ops, q->op_name(h->host, 0));
    h->log(h->host, ES_LOG_INFO, line);
    if (q->grow(h->host, 0) != ES_ERROR_INVALID_ARGUMENT) { h->set_error(h->host, "grow to 0 cells should be refused"); return ES_ERROR_INTERNAL; }
    return ES_OK;
}
static es_status pruner_epoch_end(void *inst, const es_run_state *st, const es_epoch_metrics *m, int32_t *stop) {
    pruner *s = inst;
    const es_host_services *h = s->host;
    es_op_state state = ES_OP_ACTIVE;
    double tau = 0;
    (void)st; (void)m;
    es_status r = h->search->get_op_state(h->host, 0, 0, (int32_t)s->mask_op, &state);
    if (r != ES_OK) return r;
    if ((r = h->search->get_value(h->host, "gate.tau", &tau)) != ES_OK) return r;
    if (state != ES_OP_MASKED || tau != 2.0) { h->set_error(h->host, "the search lost the op state or tau"); return ES_ERROR_INTERNAL; }
    *stop = 0;
    return ES_OK;
}
static const es_strategy_vtable pruner_table = { .struct_size = sizeof(es_strategy_vtable), .requires = ES_REQUIRES_ARCH_PARAMS,
    .create = pruner_create, .destroy = strat_destroy, .plan_step = pruner_plan, .epoch_begin = pruner_epoch_begin,
    .epoch_end = pruner_epoch_end };

/* ---- descriptions ---- */
static int64_t times_three(int32_t a) { return 3 * (int64_t)a; }
static double mix(double a, int64_t b, float c) { return a * (double)b + (double)c; }
static const char *greet(const char *who) { return (who && strcmp(who, "host") == 0) ? "hello host" : "hello stranger"; }

static const es_dynamic_method_desc methods[] = {
    { sizeof(es_dynamic_method_desc), "fixture.triple", "times-three", "int64(int32)", "3·a", (void (*)(void))times_three },
    { sizeof(es_dynamic_method_desc), "fixture.mix", "mix", "double(double,int64,float)", "a·b + c", (void (*)(void))mix },
#ifdef FIX_BAD_SIGNATURE
    { sizeof(es_dynamic_method_desc), "fixture.greet", "greet", "string(banana)", "broken", (void (*)(void))greet },
#else
    { sizeof(es_dynamic_method_desc), "fixture.greet", "greet", "string(string)", "greets", (void (*)(void))greet },
#endif
};

static const es_param_desc gate_params[] = {
#ifdef FIX_BAD_DEFAULT
    { sizeof(es_param_desc), ES_PARAM_DOUBLE, "scale", "not-a-number", "multiplier", NULL, 0, 10 },
#else
    { sizeof(es_param_desc), ES_PARAM_DOUBLE, "scale", "2.0", "multiplier", NULL, 0, 10 },
#endif
};
static const es_param_desc reg_params[] = {
    { sizeof(es_param_desc), ES_PARAM_DOUBLE, "lambda", "0.5", "strength", NULL, 0, -1 },
};
static const es_param_desc pruner_params[] = {
    { sizeof(es_param_desc), ES_PARAM_INT, "mask_op", "1", "the op masked on every normal edge", NULL, 0, 63 },
};
static const es_param_desc strat_params[] = {
    { sizeof(es_param_desc), ES_PARAM_INT, "warmup", "2", "weights-only steps", NULL, 0, 1000 },
    { sizeof(es_param_desc), ES_PARAM_INT, "epochs", "3", "epochs before stopping", NULL, 1, 1000 },
    { sizeof(es_param_desc), ES_PARAM_CHOICE, "order", "first", "arch gradient order", "first|second", 1, 0 },
};

static const char *const method_regularizers[] = { FIX_ID ".regularizer.l2/1" };
static const char *const method_settings[] = { "strategy.warmup=5", "l2.lambda=0.25" };
static const es_method_desc warmup_method = {
    sizeof(es_method_desc), 0, "fixture-warmup", "warm-up then bilevel with the linear gate and L2",
    NULL, FIX_ID ".gate.linear/1", NULL, method_regularizers, 1, 0, NULL, NULL, 0, 2, method_settings,
};

static const es_component_desc components[] = {
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.relu-conv/1", "composed ReLU then 1x1 conv", NULL, 0, NULL, 0, &op_table, NULL },
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.masked-relu/1", "ReLU with a per-channel gate", NULL, 0, NULL, 0, &masked_table, NULL },
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.merged/1", "identity and ReLU merged, weights applied by the op", NULL, 0, NULL, 0, &merged_table, NULL },
    { FIX_DESC_SIZE, ES_KIND_GATE, FIX_ID ".gate.linear/1", "scaled identity gate", gate_params, 1, methods, sizeof methods / sizeof methods[0], &gate_table, NULL },
    { FIX_DESC_SIZE, ES_KIND_REGULARIZER, FIX_ID ".regularizer.l2/1", "L2 with proximal shrink", reg_params, 1, NULL, 0, &reg_table, NULL },
    { FIX_DESC_SIZE, ES_KIND_STRATEGY, FIX_ID ".strategy.warmup/1", "warm-up then bilevel", strat_params, 3, NULL, 0, &strat_table, NULL, &warmup_method },
    { FIX_DESC_SIZE, ES_KIND_STRATEGY, FIX_ID ".strategy.pruner/1", "acts through the search services", pruner_params, 1, NULL, 0, &pruner_table, NULL },
#ifdef FIX_MASKED_CONV
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.masked-conv/1", "1x1 conv, BN, a channel mask of its own", NULL, 0, NULL, 0, &masked_conv_table, NULL },
#endif
#ifdef FIX_UNSTABLE_BUILD
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.unstable/1", "a build that changes after its first", NULL, 0, NULL, 0, &unstable_table, NULL },
#endif
#ifdef FIX_CROP_READERS
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.crop-readers/1", "a crop a convolution and an add read", NULL, 0, NULL, 0, &crop_table, NULL },
#endif
#ifdef FIX_READS_OUTPUT
    { FIX_DESC_SIZE, ES_KIND_OP, FIX_ID ".op.bn-reader/1", "a batch norm whose output it reads", NULL, 0, NULL, 0, &reader_table, NULL },
#endif
#ifdef FIX_BAD_KIND
    { FIX_DESC_SIZE, 99, FIX_ID ".thing.odd/1", "bad kind", NULL, 0, NULL, 0, &op_table, NULL },
#endif
#ifdef FIX_NULL_ID
    { FIX_DESC_SIZE, ES_KIND_OP, NULL, "no id", NULL, 0, NULL, 0, &op_table, NULL },
#endif
#ifdef FIX_SMALL_STRUCT
    { 0, ES_KIND_OP, FIX_ID ".op.small/1", "struct_size 0", NULL, 0, NULL, 0, &op_table, NULL },
#endif
};

static es_status fixture_init(const es_host_services *host) {
#ifdef FIX_INIT_FAILS
    host->set_error(host->host, "the fixture's licence file is missing");
    return ES_ERROR_INVALID_ARGUMENT;
#else
    host->log(host->host, ES_LOG_DEBUG, "fixture initialised");
    return ES_OK;
#endif
}

static const es_plugin_desc plugin = {
    sizeof(es_plugin_desc), { FIX_MAJOR, FIX_MINOR }, "org.fixture", "0.1.0", "loader test fixture",
    fixture_init, components, sizeof components / sizeof components[0],
};

#ifndef FIX_NO_ENTRY
ESPALIER_EXPORT const es_plugin_desc *espalier_plugin_entry_v1(const es_version *host_abi) {
#ifdef FIX_ENTRY_NULL
    (void)host_abi;
    (void)plugin;
    return NULL;
#else
    return host_abi ? &plugin : NULL;
#endif
}
#else
ESPALIER_EXPORT const es_plugin_desc *some_other_symbol(void) { return &plugin; }
#endif
