/* swish.c — a sample Espalier plugin in plain C: a raw op with its own forward and backward.
 *
 *   y = x · σ(β_c · x)      per channel c, β learnable (init `beta_init`, default 1)
 *   (at stride 2, on reduction edges: on every second row and column, x[:, :, ::2, ::2])
 *
 * It shows everything a C author needs: the entry point, a parameter, a learnable tensor
 * declared through the host (so the accountant counts it and the optimiser updates it), raw
 * kernels that skip work in dry runs (data == NULL), errors as values, and a dynamic method
 * (a schedule called by the host through libffi).
 *
 * Build (one command, SDK headers only):
 *   cc -std=c99 -O2 -shared -fPIC -I ../../SDK/include -o libespalier-sample-swish.so swish.c -lm
 */
#include <espalier/espalier.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct swish {
    const es_host_services *host;
    int64_t channels;
    int32_t stride;  /* 1, or 2 on the edges of a reduction cell */
    es_param beta;   /* (C) */
} swish;

static float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }

static es_status fail(const es_host_services *host, es_status status, const char *message) {
    host->set_error(host->host, message);
    return status;
}

static es_status swish_create(const es_component_desc *component, const es_host_services *host, const es_op_config *config,
                              const es_param_value *params, uint32_t param_count, void **instance) {
    (void)component;
    if (param_count < 1) return fail(host, ES_ERROR_INVALID_ARGUMENT, "swish: missing parameter beta_init");
    if (config->in_channels != config->out_channels || (config->stride != 1 && config->stride != 2))
        return fail(host, ES_ERROR_INVALID_ARGUMENT, "swish keeps the channels: it needs in_channels == out_channels and stride 1 or 2");
    swish *s = calloc(1, sizeof *s);
    if (!s) return fail(host, ES_ERROR_OUT_OF_MEMORY, "swish: out of memory");
    s->host = host;
    s->channels = config->in_channels;
    s->stride = config->stride;
    int64_t shape[1] = { s->channels };
    es_status st = host->declare_param(host->host, "beta", shape, 1, ES_INIT_CONSTANT, params[0].double_value,
                                       ES_PARAM_FLAG_NO_DECAY, &s->beta);
    if (st != ES_OK) { free(s); return st; }  /* the host already set the message */
    *instance = s;
    return ES_OK;
}

static void swish_destroy(void *instance) { free(instance); }

static es_status swish_output_shape(void *instance, const es_tensor_view *input, es_tensor_view *output) {
    swish *s = instance;
    if (input->rank != 4 || input->shape[1] != s->channels)
        return fail(s->host, ES_ERROR_SHAPE, "swish needs an (N, C, H, W) input with the configured channels");
    output->rank = 4;
    output->shape[0] = input->shape[0];
    output->shape[1] = input->shape[1];
    output->shape[2] = (input->shape[2] + s->stride - 1) / s->stride;
    output->shape[3] = (input->shape[3] + s->stride - 1) / s->stride;
    return ES_OK;
}

/* x: (N, C, H, W) · y: (N, C, H/s, W/s) · beta: (C) */
static es_status swish_forward(void *instance, const es_run_state *state, const es_tensor_view *input,
                               const es_tensor_view *params, uint32_t param_count, es_tensor_view *output) {
    (void)state; (void)param_count;
    swish *s = instance;
    if (!input->data || !output->data) return ES_OK;  /* dry run: shapes only */
    const int64_t n = input->shape[0], c = input->shape[1], h = input->shape[2], w = input->shape[3];
    const int64_t ho = output->shape[2], wo = output->shape[3], st = s->stride;
    const float *beta = params[0].data;
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < c; ch++) {
            const float *x = input->data + (i * c + ch) * h * w;
            float *y = output->data + (i * c + ch) * ho * wo;
            const float b = beta[ch];
            for (int64_t r = 0; r < ho; r++)
                for (int64_t k = 0; k < wo; k++) {
                    const float v = x[r * st * w + k * st];
                    y[r * wo + k] = v * sigmoidf_(b * v);
                }
        }
    return ES_OK;
}

/* dX = dY · (σ + βx·σ(1−σ)) at the sampled positions, 0 elsewhere (overwrite) · dβ_c += Σ dY · x²·σ(1−σ) (add) */
static es_status swish_backward(void *instance, const es_run_state *state, const es_tensor_view *input,
                                const es_tensor_view *output, const es_tensor_view *d_output,
                                const es_tensor_view *params, uint32_t param_count,
                                es_tensor_view *d_input, es_tensor_view *d_params) {
    (void)state; (void)output; (void)param_count;
    swish *s = instance;
    if (!input->data || !d_output->data) return ES_OK;
    const int64_t n = input->shape[0], c = input->shape[1], h = input->shape[2], w = input->shape[3];
    const int64_t ho = d_output->shape[2], wo = d_output->shape[3], st = s->stride;
    const float *beta = params[0].data;
    float *dbeta = d_params[0].data;  /* NULL when β needs no gradient */
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < c; ch++) {
            const float *x = input->data + (i * c + ch) * h * w;
            const float *dy = d_output->data + (i * c + ch) * ho * wo;
            float *dx = d_input->data ? d_input->data + (i * c + ch) * h * w : NULL;
            const float b = beta[ch];
            double acc = 0;
            if (dx && st != 1) for (int64_t k = 0; k < h * w; k++) dx[k] = 0;
            for (int64_t r = 0; r < ho; r++)
                for (int64_t k = 0; k < wo; k++) {
                    const int64_t xi = r * st * w + k * st;
                    const float v = x[xi], sg = sigmoidf_(b * v), ds = sg * (1 - sg), g = dy[r * wo + k];
                    if (dx) dx[xi] = g * (sg + b * v * ds);
                    acc += (double)g * v * v * ds;
                }
            if (dbeta) dbeta[ch] += (float)acc;
        }
    return ES_OK;
}

static es_status swish_flops(void *instance, const es_tensor_view *input, uint64_t *flops) {
    swish *s = instance;
    uint64_t count = (uint64_t)input->shape[0] * (uint64_t)input->shape[1];
    count *= (uint64_t)((input->shape[2] + s->stride - 1) / s->stride) * (uint64_t)((input->shape[3] + s->stride - 1) / s->stride);
    *flops = 6 * count;
    return ES_OK;
}

/* A dynamic method: a warm-up ramp for β, value(step, total) = min(1, step / (total / 10)). */
static double swish_linear_ramp(int64_t step, int64_t total) {
    const double warm = total > 10 ? (double)total / 10.0 : 1.0;
    const double v = (double)step / warm;
    return v < 1.0 ? v : 1.0;
}

static const es_op_vtable swish_table = {
    .struct_size = sizeof(es_op_vtable),
    .saves = ES_OP_SAVES_INPUT,
    .create = swish_create,
    .destroy = swish_destroy,
    .build = NULL,
    .output_shape = swish_output_shape,
    .forward = swish_forward,
    .backward = swish_backward,
    .flops = swish_flops,
    /* ABI 1.7: forward is a pure function of input, β and the step, so the host may run it again
     * in backward (--recompute) instead of keeping the activations around it. */
    .flags = ES_OP_RECOMPUTABLE,
};

static const es_param_desc swish_params[] = {
    { .struct_size = sizeof(es_param_desc), .type = ES_PARAM_DOUBLE, .name = "beta_init", .default_value = "1.0",
      .doc = "initial value of the learnable per-channel slope beta", .min_value = -10, .max_value = 10 },
};

static const es_dynamic_method_desc swish_methods[] = {
    { .struct_size = sizeof(es_dynamic_method_desc), .slot = "beta.warmup", .name = "linear-ramp",
      .signature = "double(int64,int64)", .doc = "min(1, step / (total/10)): ramp beta's learning rate in over the first tenth",
      .function = (void (*)(void))swish_linear_ramp },
};

static const es_component_desc components[] = {
    { .struct_size = sizeof(es_component_desc), .kind = ES_KIND_OP, .id = "org.example.op.swish/1",
      .summary = "swish with a learnable per-channel slope: y = x * sigmoid(beta_c * x), subsampled at stride 2 (sample C plugin, raw kernels)",
      .params = swish_params, .param_count = 1, .methods = swish_methods, .method_count = 1,
      .vtable = &swish_table, .user_data = NULL },
};

static const es_plugin_desc plugin = {
    .struct_size = sizeof(es_plugin_desc),
    .abi = ESPALIER_VERSION_INIT,
    .name = "org.example.swish",
    .version = "1.0.0",
    .summary = "Sample C plugin: a raw swish op",
    .init = NULL,
    .components = components,
    .component_count = 1,
};

ESPALIER_EXPORT const es_plugin_desc *espalier_plugin_entry_v1(const es_version *host_abi) {
    if (!host_abi || host_abi->major != ESPALIER_ABI_MAJOR) return NULL;
    return &plugin;
}
