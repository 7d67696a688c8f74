/* settings_fixture.c — test plugins for the settings a run hands its plugins (issue 14, "Settings
 * between the steps of a workflow" and the plugin inputs of "Files and inputs"); built with cc by
 * the tests (PluginFixtures.build(…, source: settingsFixtureSource)).
 * With no flag:
 *   org.settings.gate.clock/1   a soft gate (not ES_GATE_HARD). Training: uniform weights 1/cols.
 *                               Evaluation (training = 0): every weight is epoch·1000 + step + 1 of
 *                               the run state it was called with, so a logged weight shows the state.
 *                               skip_first=true marks candidate 0 of every row inactive although
 *                               its weight is not 0 (what only a hard gate may do).
 *   org.settings.op.scaled/1    composed: y = factor · avg_pool2d(x, kernel 1, stride s) with
 *                               factor = parameter `scale` (default 1); `attr` names the stride
 *                               attribute it passes ("stride", or the typo "strides").
 *   org.settings.op.huge/1      raw: output_shape reports (N, C, 2^28, 2^28).
 *   org.settings.op.stamp/1     raw identity (stride 1) that logs the run state of every forward at
 *                               info level: "stamp training=T epoch=E/TE step=S/TS".
 *   org.settings.regularizer.count/1  a loss term equal to `weight` (no gradient), on α.
 *   -DFIX_BAD_PARAM_NAME        the scaled op's parameter is named "λ" (outside [a-z0-9_.-]).
 *   -DFIX_SHADOW                the gate also offers tau.schedule=linear-decay, a built-in name.
 *   -DFIX_HUGE_PARAM            the scaled op declares a parameter of shape (2^32, 2^32), whose
 *                               element count overflows 64 bits (to 0).
 *   -DFIX_ID=...                component id prefix.
 *   -DFIX_STAMP_RECOMPUTABLE    the stamp op declares ES_OP_RECOMPUTABLE (ABI 1.7).
 */
#include <espalier/espalier.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FIX_ID
#define FIX_ID "org.settings"
#endif

/* ---- gate: weights show the run state in evaluation ---- */
typedef struct { int skip_first; } clock_gate;
static es_status clock_create(const es_component_desc *component, const es_host_services *host, const es_gate_config *cfg,
                              const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)host; (void)cfg; (void)n;
    clock_gate *g = calloc(1, sizeof *g);
    g->skip_first = (int)params[0].int_value;
    *inst = g;
    return ES_OK;
}
static void plain_destroy(void *inst) { free(inst); }
static es_status clock_forward(void *inst, const es_run_state *st, const es_tensor_view *l, es_tensor_view *w, uint8_t *active) {
    clock_gate *g = inst;
    int64_t rows = l->shape[0], cols = l->shape[1];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            int64_t i = r * cols + c;
            w->data[i] = st->training ? 1.0f / (float)cols : (float)(st->epoch * 1000 + st->step + 1);
            if (active) active[i] = (g->skip_first && c == 0) ? 0 : 1;
        }
    return ES_OK;
}
static es_status clock_backward(void *inst, const es_run_state *st, const es_tensor_view *l, const es_tensor_view *w,
                                const es_tensor_view *dw, es_tensor_view *dl) {
    (void)inst; (void)st; (void)l; (void)w; (void)dw; (void)dl;
    return ES_OK;
}
static const es_gate_vtable clock_table = { .struct_size = sizeof(es_gate_vtable), .flags = 0,
    .granularities = (1u << ES_GATE_OPS) | (1u << ES_GATE_INPUTS), .create = clock_create, .destroy = plain_destroy,
    .forward = clock_forward, .backward = clock_backward };

/* ---- composed op: y = scale · avg_pool2d(x, 1, stride) ---- */
typedef struct { const es_host_services *host; double scale; int stride; const char *attr; } scaled_op;
static es_status scaled_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                               const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)n;
    scaled_op *o = calloc(1, sizeof *o);
    o->host = host;
    o->scale = params[0].double_value;
    o->attr = params[1].int_value == 0 ? "stride" : "strides";
    o->stride = cfg->stride;
#ifdef FIX_HUGE_PARAM
    {
        int64_t shape[2] = { (int64_t)1 << 32, (int64_t)1 << 32 };
        es_param p;
        es_status st = host->declare_param(host->host, "huge", shape, 2, ES_INIT_ZEROS, 0, 0, &p);
        if (st != ES_OK) { free(o); return st; }
    }
#endif
    *inst = o;
    return ES_OK;
}
static es_status scaled_build(void *inst, es_graph g, es_value x, es_value *out) {
    scaled_op *o = inst;
    const es_host_services *h = o->host;
    es_value p;
    es_attr pool[2] = { { "kernel", 1 }, { o->attr, o->stride } };
    es_status st = h->graph_apply(h->host, g, "avg_pool2d", &x, 1, pool, 2, &p);
    if (st != ES_OK) return st;
    es_attr factor[1] = { { "factor", o->scale } };
    return h->graph_apply(h->host, g, "scale", &p, 1, factor, 1, out);
}
static const es_op_vtable scaled_table = { .struct_size = sizeof(es_op_vtable), .create = scaled_create, .destroy = plain_destroy,
    .build = scaled_build };

/* ---- raw op whose output shape overflows ---- */
static es_status huge_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                             const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)host; (void)cfg; (void)params; (void)n;
    *inst = calloc(1, 8);
    return ES_OK;
}
static es_status huge_shape(void *inst, const es_tensor_view *in, es_tensor_view *out) {
    (void)inst;
    *out = *in;
    out->rank = 4;
    out->shape[2] = (int64_t)1 << 28;
    out->shape[3] = (int64_t)1 << 28;
    return ES_OK;
}
static es_status huge_forward(void *inst, const es_run_state *st, const es_tensor_view *in, const es_tensor_view *p, uint32_t n,
                              es_tensor_view *out) {
    (void)inst; (void)st; (void)in; (void)p; (void)n; (void)out;
    return ES_OK;
}
static es_status huge_backward(void *inst, const es_run_state *st, const es_tensor_view *in, const es_tensor_view *out,
                               const es_tensor_view *dout, const es_tensor_view *p, uint32_t n, es_tensor_view *din, es_tensor_view *dp) {
    (void)inst; (void)st; (void)in; (void)out; (void)dout; (void)p; (void)n; (void)din; (void)dp;
    return ES_OK;
}
static const es_op_vtable huge_table = { .struct_size = sizeof(es_op_vtable), .create = huge_create, .destroy = plain_destroy,
    .output_shape = huge_shape, .forward = huge_forward, .backward = huge_backward };

/* ---- raw identity that logs the run state it is called with ---- */
typedef struct { const es_host_services *host; } stamp_op;
static es_status stamp_create(const es_component_desc *component, const es_host_services *host, const es_op_config *cfg,
                              const es_param_value *params, uint32_t n, void **inst) {
    (void)component; (void)params; (void)n;
    if (cfg->stride != 1 || cfg->in_channels != cfg->out_channels) {
        host->set_error(host->host, "stamp: identity only (stride 1, in = out channels)");
        return ES_ERROR_UNSUPPORTED;
    }
    stamp_op *o = calloc(1, sizeof *o);
    o->host = host;
    *inst = o;
    return ES_OK;
}
static es_status stamp_shape(void *inst, const es_tensor_view *in, es_tensor_view *out) {
    (void)inst;
    *out = *in;
    return ES_OK;
}
static int64_t view_count(const es_tensor_view *v) {
    int64_t n = 1;
    for (int k = 0; k < v->rank; k++) n *= v->shape[k];
    return n;
}
static es_status stamp_forward(void *inst, const es_run_state *st, const es_tensor_view *in, const es_tensor_view *p, uint32_t n,
                               es_tensor_view *out) {
    (void)p; (void)n;
    stamp_op *o = inst;
    char line[128];
    snprintf(line, sizeof line, "stamp training=%d epoch=%lld/%lld step=%lld/%lld", (int)st->training, (long long)st->epoch,
             (long long)st->total_epochs, (long long)st->step, (long long)st->total_steps);
    o->host->log(o->host->host, ES_LOG_INFO, line);
    memcpy(out->data, in->data, (size_t)view_count(in) * sizeof(float));
    return ES_OK;
}
static es_status stamp_backward(void *inst, const es_run_state *st, const es_tensor_view *in, const es_tensor_view *out,
                                const es_tensor_view *dout, const es_tensor_view *p, uint32_t n, es_tensor_view *din, es_tensor_view *dp) {
    (void)inst; (void)st; (void)in; (void)out; (void)p; (void)n; (void)dp;
    if (din->data) memcpy(din->data, dout->data, (size_t)view_count(dout) * sizeof(float));
    return ES_OK;
}
static const es_op_vtable stamp_table = { .struct_size = sizeof(es_op_vtable), .create = stamp_create, .destroy = plain_destroy,
    .output_shape = stamp_shape, .forward = stamp_forward, .backward = stamp_backward,
#ifdef FIX_STAMP_RECOMPUTABLE
    .flags = ES_OP_RECOMPUTABLE,
#endif
};

/* ---- regularizer: a constant term `weight` ---- */
typedef struct { double weight; } count_reg;
static es_status count_create(const es_component_desc *component, const es_host_services *host, const es_param_value *p, uint32_t n, void **inst) {
    (void)component; (void)host; (void)n;
    count_reg *r = calloc(1, sizeof *r);
    r->weight = p[0].double_value;
    *inst = r;
    return ES_OK;
}
static es_status count_loss(void *inst, const es_run_state *st, es_reg_target *t, uint32_t n, double *loss) {
    (void)st; (void)t; (void)n;
    *loss = ((count_reg *)inst)->weight;
    return ES_OK;
}
static const es_regularizer_vtable count_table = { .struct_size = sizeof(es_regularizer_vtable), .targets = 1u << ES_TARGET_ARCH,
    .create = count_create, .destroy = plain_destroy, .loss = count_loss };

/* ---- descriptions ---- */
#ifdef FIX_SHADOW
static double shadow_tau(int64_t step, int64_t total) { (void)step; (void)total; return 42; }
static const es_dynamic_method_desc clock_methods[] = {
    { sizeof(es_dynamic_method_desc), "tau.schedule", "linear-decay", "double(int64,int64)", "shadows the built-in", (void (*)(void))shadow_tau },
};
#endif
static const es_param_desc clock_params[] = {
    { sizeof(es_param_desc), ES_PARAM_BOOL, "skip_first", "false", "mark candidate 0 inactive (a soft gate must not)", NULL, 1, 0 },
};
static const es_param_desc scaled_params[] = {
#ifdef FIX_BAD_PARAM_NAME
    { sizeof(es_param_desc), ES_PARAM_DOUBLE, "\xce\xbb", "1.0", "output factor", NULL, 0, 10 },
#else
    { sizeof(es_param_desc), ES_PARAM_DOUBLE, "scale", "1.0", "output factor", NULL, 0, 10 },
#endif
    { sizeof(es_param_desc), ES_PARAM_CHOICE, "attr", "stride", "the stride attribute's name", "stride|strides", 1, 0 },
};
static const es_param_desc count_params[] = {
    { sizeof(es_param_desc), ES_PARAM_DOUBLE, "weight", "1.0", "the term's value", NULL, 0, 1000 },
};

static const es_component_desc components[] = {
#ifdef FIX_SHADOW
    { sizeof(es_component_desc), ES_KIND_GATE, FIX_ID ".gate.clock/1", "weights show the run state", clock_params, 1, clock_methods, 1, &clock_table, NULL },
#else
    { sizeof(es_component_desc), ES_KIND_GATE, FIX_ID ".gate.clock/1", "weights show the run state", clock_params, 1, NULL, 0, &clock_table, NULL },
#endif
    { sizeof(es_component_desc), ES_KIND_OP, FIX_ID ".op.scaled/1", "scale · x (strided)", scaled_params, 2, NULL, 0, &scaled_table, NULL },
    { sizeof(es_component_desc), ES_KIND_OP, FIX_ID ".op.huge/1", "reports an overflowing output shape", NULL, 0, NULL, 0, &huge_table, NULL },
    { sizeof(es_component_desc), ES_KIND_OP, FIX_ID ".op.stamp/1", "identity that logs its run state", NULL, 0, NULL, 0, &stamp_table, NULL },
    { sizeof(es_component_desc), ES_KIND_REGULARIZER, FIX_ID ".regularizer.count/1", "a constant term", count_params, 1, NULL, 0, &count_table, NULL },
};

static const es_plugin_desc plugin = {
    sizeof(es_plugin_desc), { ESPALIER_ABI_MAJOR, ESPALIER_ABI_MINOR }, "org.settings", "0.1.0", "settings test fixture",
    NULL, components, sizeof components / sizeof components[0],
};

ESPALIER_EXPORT const es_plugin_desc *espalier_plugin_entry_v1(const es_version *host_abi) { return host_abi ? &plugin : NULL; }
