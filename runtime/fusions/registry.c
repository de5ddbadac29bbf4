/* registry.c - the plan-time fusions, in the order the planner runs them
 * (see fuse.h). A new fused path is a file in runtime/fusions/ plus a line
 * here. */
#include "runtime/fusions/fuse.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/ternary_fused.h"

const nbl_fusion_def nbl_fusions[] = {
    /* first, so that a quantized Conv is never taken as an FP32 one */
    {"int4", nbl_fuse_int4_plan, nbl_fuse_int4_node, nbl_fuse_int4_free, &nbl_i4_fused_def},
    /* ternary weights x INT8 activations (QuantizeAbsmax8 + QuantizeTernary) */
    {"ternary", nbl_fuse_ternary_plan, nbl_fuse_ternary_node, nbl_fuse_ternary_free, &nbl_t_fused_def},
    /* then on the Convs left */
    {"conv-act", nbl_fuse_conv_act_plan, nbl_fuse_state_node, nbl_fuse_state_free,
     &nbl_fused_conv_act_def},
    /* training graphs: BatchNormInternal -> [Add ->] Relu -> QuantizeInt4 */
    {"bn-act", nbl_fuse_bn_act_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_bn_act_def},
    /* training graphs: [Add ->] [QuantizeInt4Grad ->] ReluGrad -> BatchNormalizationGrad */
    {"bn-grad", nbl_fuse_bn_grad_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_bn_grad_def},
    /* training graphs: two QuantizeLog (nearest, tpr) of one gradient */
    {"log-pair", nbl_fuse_log_pair_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_log_pair_def},
    /* zero Pad -> AveragePool counting the padding: the pads merged (the
     * pool's own kernel, from the op table) */
    {"pad-pool", nbl_fuse_pad_pool_plan, nbl_fuse_state_node, nbl_fuse_state_free, NULL},
    /* Relu -> MaxPool (after conv-act, which takes a Conv's Relu first) */
    {"relu-pool", nbl_fuse_relu_pool_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_relu_pool_def},
    /* Mul(x, Sigmoid(x)) and Mul(x, HardSigmoid(x)), either order: SiLU, HardSwish */
    {"silu", nbl_fuse_silu_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_silu_def},
    /* Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5), operands in either order: GELU (erf) */
    {"gelu", nbl_fuse_gelu_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_gelu_def},
    /* training graphs: MaxPoolGrad -> ReluGrad */
    {"pool-grad", nbl_fuse_pool_grad_plan, nbl_fuse_state_node, nbl_fuse_state_free, &nbl_fused_pool_grad_def},
};

const size_t nbl_fusions_count = sizeof nbl_fusions / sizeof nbl_fusions[0];
