// Channel-mask cost targets for FiGS's expected-cost regularizer in the common trainer. Ops that
// gate their own channels (the FiGS ops of Plugins/figs) declare mask logits named
// "mask_mid.logits" (M) and "mask_out.logits" (C); their convolutions are found by the names the
// FiGS ops give them. After every backward the host hands each gate-weight regularizer one target
// per masked convolution (ES_TARGET_GATE_WEIGHTS, name "channels/OP_PATH/CONV/params"; parts =
// the logits ν of the masks the convolution's parameter count depends on, costs = per-channel
// unit costs, grads = the logits' gradients, which the weight step then applies):
//   figs_sep_conv   pw1 (C → M, in unmasked):  parts [ν_mid], cost C·k_h·k_w each      → C·Σπ_mid
//                   dw2 (depthwise on M):      parts [ν_mid], cost k_h·k_w each        → k²·Σπ_mid
//                   pw2 (M → C):               parts [ν_mid, ν_out], costs 1, 1        → Σπ_mid·Σπ_out
//   figs_dil_conv   pw (C → C, in unmasked):   parts [ν_out], cost C each              → C·Σπ_out
// Convolutions whose inputs and outputs are both unmasked have a constant cost and no target.
// Only the parameter count is given ("/params"); FLOPs and memory targets are not built yet.
// Export (FiGS §3.2): each masked layer keeps ⌊Σπ⌋ channels, π = σ(ν) (`channelMaskExport`); the
// intermediate width becomes the op's `mid_channels` setting. A cell's op outputs are summed at
// the width C, so the output masks' counts are reported but the exported ops keep C outputs.

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// One op with channel masks: its owner path and parameters by the op's own names.
struct ChannelMaskedOp {
    let path: String
    let id: String
    let params: [String: Parameter]
}

extension Supernet {
    /// Every op in the supernet that declares "mask_out.logits".
    func channelMaskedOps() -> [ChannelMaskedOp] {
        var out: [ChannelMaskedOp] = []
        for cell in cells {
            for edge in cell.edges {
                for case let op? in edge.ops {
                    let prefix = op.ownerPath + "/"
                    var byName: [String: Parameter] = [:]
                    for p in op.parameters where p.name.hasPrefix(prefix) { byName[String(p.name.dropFirst(prefix.count))] = p }
                    if byName["mask_out.logits"] != nil { out.append(ChannelMaskedOp(path: op.ownerPath, id: op.component.id, params: byName)) }
                }
            }
        }
        return out
    }
}

extension SearchRun {
    /// The "channels/…/params" targets of every masked convolution of the supernet.
    func channelMaskTargets() throws -> [RegularizerTarget] {
        var targets: [RegularizerTarget] = []
        func grad(_ p: Parameter) throws -> Tensor? { p.requiresGrad ? try p.ensureGrad() : nil }
        func constant(_ value: Float, like p: Parameter) throws -> Tensor {
            try Tensor.from([Float](repeating: value, count: p.count), shape: p.shape, category: .workspace, accountant: accountant)
        }
        for op in supernet.channelMaskedOps() {
            let out = op.params["mask_out.logits"]!
            if let mid = op.params["mask_mid.logits"], let pw1 = op.params["pw1.weight"], let dw2 = op.params["dw2.weight"], op.params["pw2.weight"] != nil {
                let cIn = Float(pw1.shape[1] * pw1.shape[2] * pw1.shape[3]), k2 = Float(dw2.shape[2] * dw2.shape[3])
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/pw1/params", values: [mid.value],
                                                 grads: [try grad(mid)], costs: [try constant(cIn, like: mid)]))
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/dw2/params", values: [mid.value],
                                                 grads: [try grad(mid)], costs: [try constant(k2, like: mid)]))
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/pw2/params", values: [mid.value, out.value],
                                                 grads: [try grad(mid), try grad(out)], costs: [try constant(1, like: mid), try constant(1, like: out)]))
            } else if let pw = op.params["pw.weight"] {
                let cIn = Float(pw.shape[1] * pw.shape[2] * pw.shape[3])
                targets.append(RegularizerTarget(kind: .gateWeights, name: "channels/\(op.path)/pw/params", values: [out.value],
                                                 grads: [try grad(out)], costs: [try constant(cIn, like: out)]))
            }
        }
        return targets
    }

    /// After a backward: the gate-weight regularizers' terms on the channel masks, their gradients
    /// added into the mask logits' gradients (when those are being trained). Returns the terms' sum.
    func applyChannelMaskRegularizers() throws -> Double {
        let regs = regularizers.filter { $0.hasLoss && $0.wants(.gateWeights) }
        guard !regs.isEmpty else { return 0 }
        let targets = try accountant.withOwner("regularizer") { try channelMaskTargets() }
        guard !targets.isEmpty else { return 0 }
        var total = 0.0
        for r in regs { total += try r.loss(targets, state: state) }
        return total
    }
}

/// One masked op of the search and its exported widths.
public struct ChannelMaskExport: Equatable, Sendable {
    /// The op's owner path in the supernet (e.g. "cell0/edge3/figs_sep_conv_3x3") and its component id.
    public var path: String
    public var op: String
    /// ⌊Σπ⌋ (at least 1) of each mask, by mask name ("mask_mid", "mask_out").
    public var channels: [String: Int]
    /// Settings that build the exported op (`mid_channels` = ⌊Σπ_mid⌋ for ops with an intermediate mask).
    public var settings: [String: String]
}

extension SearchRun {
    /// FiGS's export: for every op with channel masks, ⌊Σ_i σ(ν_i)⌋ channels per mask (at least 1).
    public func channelMaskExport() -> [ChannelMaskExport] {
        supernet.channelMaskedOps().map { op in
            var channels: [String: Int] = [:]
            for (name, p) in op.params where name.hasPrefix("mask_") && name.hasSuffix(".logits") {
                let sum = (0..<p.count).reduce(0.0) { $0 + 1 / (1 + exp(-Double(p.value[$1]))) }
                channels[String(name.dropLast(".logits".count))] = max(1, Int(sum.rounded(.down)))
            }
            let settings = channels["mask_mid"].map { ["mid_channels": String($0)] } ?? [:]
            return ChannelMaskExport(path: op.path, op: op.id, channels: channels, settings: settings)
        }.sorted { $0.path < $1.path }
    }
}
