/* template_op.c — the smallest complete Espalier plugin: copy this folder to start your own op.
 *
 *   y = BN(conv1x1(x))    x: (N, Cin, H, W) → y: (N, Cout, ⌈H/s⌉, ⌈W/s⌉), s = the edge's stride
 *
 * A composed op: `build` appends host primitives (conv2d, batch_norm) to the graph, and the host
 * differentiates them, counts their memory and runs them in dry runs, so there is no kernel, no
 * backward and no dry-run case to write here. It has every required callback (create, destroy,
 * build) and nothing else. Not here: typed parameters, raw kernels, dynamic methods
 * (see ../c-swish-op), the optional `flops` and `build_mixed` (espalier_op.h).
 *
 * To make it yours: change the id, the library name and the two file names (the library's must
 * start with libespalier-), declare your tensors in create and build your op in build.
 *
 * Build (one command, SDK headers only):
 *   cc -std=c99 -O2 -shared -fPIC -I ../../SDK/include -o libespalier-template-op.so template_op.c -lm
 */
#include <espalier/espalier.h>
#include <stdlib.h>

typedef struct template_op {
    const es_host_services *host;  /* valid until destroy; read host->host at each call */
    int32_t stride;                /* 1, or 2 on the edges of a reduction cell that leave its inputs */
    es_param weight;               /* (Cout, Cin, 1, 1) */
    es_param gamma, beta;          /* (Cout), only when config->affine; else NULL */
    es_param running_mean;         /* (Cout), buffer */
    es_param running_var;          /* (Cout), buffer */
} template_op;

static es_status fail(const es_host_services *host, es_status status, const char *message) {
    host->set_error(host->host, message);
    return status;
}

/* Declares the op's tensors; the host owns, counts, initialises and trains them. */
static es_status template_create(const es_component_desc *component, const es_host_services *host, const es_op_config *config,
                                 const es_param_value *params, uint32_t param_count, void **instance) {
    (void)component; (void)params; (void)param_count;
    if (config->in_channels < 1 || config->out_channels < 1 || (config->stride != 1 && config->stride != 2))
        return fail(host, ES_ERROR_INVALID_ARGUMENT, "template op: needs channels >= 1 and stride 1 or 2");
    template_op *op = calloc(1, sizeof *op);
    if (!op) return fail(host, ES_ERROR_OUT_OF_MEMORY, "template op: out of memory");
    op->host = host;
    op->stride = config->stride;
    const int64_t w_shape[4] = { config->out_channels, config->in_channels, 1, 1 };
    const int64_t c_shape[1] = { config->out_channels };
    es_status st = host->declare_param(host->host, "conv.weight", w_shape, 4, ES_INIT_UNIFORM_FAN_IN,
                                       (double)config->in_channels, 0, &op->weight);
    if (st == ES_OK && config->affine)
        st = host->declare_param(host->host, "bn.weight", c_shape, 1, ES_INIT_ONES, 0, 0, &op->gamma);
    if (st == ES_OK && config->affine)
        st = host->declare_param(host->host, "bn.bias", c_shape, 1, ES_INIT_ZEROS, 0, 0, &op->beta);
    if (st == ES_OK)
        st = host->declare_param(host->host, "bn.running_mean", c_shape, 1, ES_INIT_ZEROS, 0, ES_PARAM_FLAG_BUFFER, &op->running_mean);
    if (st == ES_OK)
        st = host->declare_param(host->host, "bn.running_var", c_shape, 1, ES_INIT_ONES, 0, ES_PARAM_FLAG_BUFFER, &op->running_var);
    if (st != ES_OK) { free(op); return st; }  /* the host already set the message */
    *instance = op;
    return ES_OK;
}

/* Frees what create allocated itself; the declared tensors are the host's. */
static void template_destroy(void *instance) { free(instance); }

/* *output = BN(conv1x1(input)): primitives applied to values of `graph`. */
static es_status template_build(void *instance, es_graph graph, es_value input, es_value *output) {
    template_op *op = instance;
    const es_host_services *h = op->host;
    es_value w, conv, bn[5];
    es_status st = h->graph_param(h->host, graph, op->weight, &w);
    if (st != ES_OK) return st;
    const es_value conv_in[2] = { input, w };
    const es_attr conv_attrs[1] = { { "stride", (double)op->stride } };
    if ((st = h->graph_apply(h->host, graph, "conv2d", conv_in, 2, conv_attrs, 1, &conv)) != ES_OK) return st;
    uint32_t n = 0;
    bn[n++] = conv;
    if ((st = h->graph_param(h->host, graph, op->running_mean, &bn[n++])) != ES_OK) return st;
    if ((st = h->graph_param(h->host, graph, op->running_var, &bn[n++])) != ES_OK) return st;
    if (op->gamma) {
        if ((st = h->graph_param(h->host, graph, op->gamma, &bn[n++])) != ES_OK) return st;
        if ((st = h->graph_param(h->host, graph, op->beta, &bn[n++])) != ES_OK) return st;
    }
    const es_attr bn_attrs[2] = { { "momentum", 0.1 }, { "eps", 1e-5 } };
    return h->graph_apply(h->host, graph, "batch_norm", bn, n, bn_attrs, 2, output);
}

static const es_op_vtable template_table = {
    .struct_size = sizeof(es_op_vtable),
    .create = template_create,
    .destroy = template_destroy,
    .build = template_build,
};

static const es_component_desc components[] = {
    { .struct_size = sizeof(es_component_desc), .kind = ES_KIND_OP, .id = "org.example.op.conv1x1_bn/1",
      .summary = "1x1 convolution then batch norm (the copyable template plugin, composed from host primitives)",
      .vtable = &template_table },
};

static const es_plugin_desc plugin = {
    .struct_size = sizeof(es_plugin_desc),
    .abi = ESPALIER_VERSION_INIT,
    .name = "org.example.template",
    .version = "1.0.0",
    .summary = "Template C plugin: a composed op to copy",
    .components = components,
    .component_count = 1,
};

/* The one exported symbol: refuses a host of another ABI major, must not call the host. */
ESPALIER_EXPORT const es_plugin_desc *espalier_plugin_entry_v1(const es_version *host_abi) {
    if (!host_abi || host_abi->major != ESPALIER_ABI_MAJOR) return NULL;
    return &plugin;
}
