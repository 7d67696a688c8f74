// The cell's repeated unit as one op: ReLU → depthwise k×k → pointwise 1×1 → batch norm (no
// affine map, batch statistics), the body of the separable and dilated convolutions (6 of every
// 8 DARTS candidates). The host reaches it by matching the unit in an op's IR (EspalierHost's
// OpIR+Fusion.swift), so any op built from these primitives gets it.
//   forward   one sweep per sample (Kernels/SeparableUnit.swift): the depthwise kernel applies
//             the ReLU itself (relu(x) is never stored) and the pointwise product reads its
//             planes while they are in L2, taking the batch-norm sums from its registers; y is
//             normalised in place: the unfused path's BN statistics pass and its pre-BN tensor
//             are gone, and t is kept only where a backward will read it.
//   backward  BN's sums (one pass over y and dY, or none where the consumer handed them over with
//             the gradient: a weighted sum's backward, which reads both anyway); then one sweep per sample
//             (Kernels/SeparableUnit.swift): the BN input gradient in a tile, consumed by both
//             pointwise GEMMs at once, dT (the depthwise output's gradient) into a second tile,
//             and the depthwise backward of the sample's planes from it. Neither the full-size BN
//             gradient nor dT is ever stored whole. (Off the depthwise fast path: dT whole, then
//             the depthwise backward, as PointwiseBatchNorm.swift and conv2dBackward make them.)
// On the depthwise fast path it keeps x, y and the per-channel mean and 1/σ, not the depthwise
// output t the unfused ops keep: the backward's sweep computes each t[s] again from x[s] (the
// same bits) while x[s] is in the cache anyway. It updates the running statistics as batchNorm
// does. Where a fused path does not apply (evaluation, ghost batch norm, a geometry off the
// depthwise fast path, a 1×1 with stride) it is the unfused ops, its reference.

import Foundation

extension Graph {
    /// Whether `fusedSeparableUnit` runs fused for these geometries in this graph's mode.
    public func fusesSeparableUnit(depthwise gd: ConvGeometry, pointwise gp: ConvGeometry, reluInput: Bool) -> Bool {
        training && batchNormGroups == 1 && gd.algorithm == .depthwise && (!reluInput || gd.supportsReLUInput)
            && gp.algorithm == .pointwise && gp.n * gp.h * gp.w > 1
    }

    /// batchNorm(conv2d(conv2d(relu?(x), wd, depthwise), wp), runningMean, runningVar), no affine map.
    /// x (N, C, H, W) · wd (C, 1, k, k) · wp (Cout, C, 1, 1).
    /// With `sink` (no tape only): y is added into the sink's target as it is normalised, not stored.
    public func fusedSeparableUnit(_ x: Variable, depthwise wd: Variable, pointwise wp: Variable, stride: Int, padding: Int, dilation: Int,
                                   reluInput: Bool, runningMean: Tensor, runningVar: Tensor, momentum: Float, eps: Float,
                                   sink: ForwardSink? = nil) throws -> Variable {
        guard x.shape.count == 4, wd.shape.count == 4, wp.shape.count == 4 else {
            throw EspalierError.shapeMismatch("the separable unit needs x (N,C,H,W) and two 4-D weights; got \(x.shape), \(wd.shape), \(wp.shape)")
        }
        let c = x.shape[1]
        let gd = ConvGeometry(n: x.shape[0], cIn: c, h: x.shape[2], w: x.shape[3], cOut: wd.shape[0], kh: wd.shape[2], kw: wd.shape[3],
                              stride: stride, padding: padding, dilation: dilation, groups: c)
        let gp = ConvGeometry(n: gd.n, cIn: gd.cOut, h: gd.hOut, w: gd.wOut, cOut: wp.shape[0], kh: wp.shape[2], kw: wp.shape[3])
        guard gd.validate() == nil, gp.validate() == nil, wd.shape[1] == 1, wp.shape[1] == gd.cOut, runningMean.count == gp.cOut, runningVar.count == gp.cOut,
              fusesSeparableUnit(depthwise: gd, pointwise: gp, reluInput: reluInput) else {
            // The reference: the ops one by one (they name any shape problem).
            let t = try conv2d(x, wd, stride: stride, padding: padding, dilation: dilation, groups: c, reluInput: reluInput)
            return try batchNorm(try conv2d(t, wp), gamma: nil, beta: nil, runningMean: runningMean, runningVar: runningVar, momentum: momentum, eps: eps,
                                 sink: sink)
        }
        try checkSink(sink, gp.outputShape)
        let n = gp.n, cOut = gp.cOut, hw = gp.h * gp.w, chunks = Parallel.chunkCount(n)
        // On the depthwise fast path the unit runs a sample at a time (SeparableUnit.swift); else
        // the depthwise kernel first, over the whole batch.
        let sweeps = gd.onDepthwiseFastPath
        // t = depthwise(relu(x)): off the fast path, kept for both backward GEMMs' operands; on it,
        // never stored: the backward's sweep computes each t[s] again from x[s] (the same bits),
        // which is in the cache there for the depthwise backward anyway. An (N, C, Ho, Wo) tensor
        // less to write here, hold through the step and read back.
        let keepsT = !sweeps
        let t = keepsT ? try Tensor(shape: gd.outputShape, category: .activations, accountant: accountant) : nil
        if !sweeps, let t {
            let ws = try Tensor(shape: [max(1, gd.forwardWorkspaceFloats())], category: .workspace, accountant: accountant)
            if computing { Kernels.conv2dForward(gd, x: x.value.ptr, w: wd.value.ptr, y: t.ptr, workspace: ws.ptr, reluInput: reluInput) }
        }
        let y = try output(gp.outputShape)
        let mean = try Tensor(shape: [cOut], category: .activations, accountant: accountant)
        let invStd = try Tensor(shape: [cOut], category: .activations, accountant: accountant)
        do {
            // Σ and Σ² per chunk and channel, in Double (2 floats each).
            let scratch = try Tensor(shape: [2 * Kernels.pointwiseStatisticsDoubles(cOut: cOut, chunks: chunks)], category: .workspace, accountant: accountant)
            let ws = sweeps ? try Tensor(shape: [max(1, Kernels.separableUnitForwardFloats(gd, keepingT: keepsT))], category: .workspace, accountant: accountant) : nil
            if computing {
                let sums = UnsafeMutableRawPointer(scratch.ptr).bindMemory(to: Double.self, capacity: Kernels.pointwiseStatisticsDoubles(cOut: cOut, chunks: chunks))
                if let ws {
                    Kernels.separableUnitForward(gd, cOut: cOut, x: x.value.ptr, wd: wd.value.ptr, wp: wp.value.ptr, t: t?.ptr, y: y.ptr, sums: sums,
                                                 reluInput: reluInput, workspace: ws.ptr)
                } else {
                    Kernels.pointwiseForwardWithStatistics(n: n, cIn: gp.cIn, cOut: cOut, hw: hw, t: t!.ptr, w: wp.value.ptr, y: y.ptr, sums: sums)
                }
                let m = Double(n * hw)
                for ch in 0..<cOut {
                    let mu = sums[ch] / m
                    mean[ch] = Float(mu)
                    invStd[ch] = Float(max(0, sums[cOut + ch] / m - mu * mu))   // the variance, for now
                }
                if !isReplaying { updateRunningStatistics(runningMean, runningVar, mean: mean, variance: invStd, count: n * hw,
                                                          momentum: runningMomentum(runningMean, momentum)) }
                for ch in 0..<cOut { invStd[ch] = 1 / (invStd[ch] + eps).squareRoot() }
                Kernels.batchNormApply(y.ptr, n: n, c: cOut, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil, beta: nil,
                                       y: sink?.target.ptr ?? y.ptr, accumulate: sink?.scale)
            }
        }
        flops += gd.forwardFlops + gp.forwardFlops + n * cOut * hw * 5
        if let sink { return untaped(sink.target) }
        guard isRecording && [x, wd, wp].contains(where: { $0.node != nil }) else { return untaped(y) }   // no backward will run
        let xValue = x.value, wdValue = wd.value, wpValue = wp.value
        // dY may come with a pending mixing weight (ctx.outputScale): both passes below multiply as they
        // read; and with its channel sums (a weighted sum's backward made them), BN's sums pass is skipped.
        return record(y, inputs: [x, wd, wp], reads: [.scaled, .channelSums]) { [unowned self] dY, ctx in
            let needX = ctx.needs(0), needWd = ctx.needs(1), needWp = ctx.needs(2)
            let needT = needX || needWd
            // BN's sums, Σ dY and Σ dY·x̂ per channel (x̂ = y), as its backward takes them; then their means.
            let means = try self.gradTensor([2 * cOut], zeroed: true)
            if ctx.computing {
                Kernels.batchNormBackward(y.ptr, dY: dY.ptr, dYScale: ctx.outputScale, n: n, c: cOut, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil,
                                          batchStatistics: true, dX: nil, dGamma: means.ptr + cOut, dBeta: means.ptr, normalizedInput: true,
                                          handedSums: ctx.outputChannelSums)
                let m = Float(n * hw)
                for ch in 0..<(2 * cOut) { means[ch] /= m }
            }
            var dWp: Tensor? = nil, dWpIsTemp = false
            if needWp { if let pg = try ctx.parameterGrad(2) { dWp = pg } else { dWp = try self.gradTensor(wp.shape, zeroed: true); dWpIsTemp = true } }
            if gd.onDepthwiseFastPath {
                // One sweep per sample (Kernels/SeparableUnit.swift): dT stays in a tile. dX and dWd
                // as the depthwise conv2d's backward takes them.
                try self.withConvolutionGradients(gd, ctx, xIndex: 0, wIndex: 1) { dX, dXAddend, dWd in
                    let ws = try Tensor(shape: [Kernels.separableUnitBackwardFloats(gd, cOut: cOut, needInputGrad: needX, needDepthwiseGrad: needWd,
                                                                                    needPointwiseGrad: needWp, reluInput: reluInput, keptT: false)],
                                        category: .workspace, accountant: self.accountant)
                    if ctx.computing {
                        Kernels.separableUnitBackward(gd, cOut: cOut, x: xValue.ptr, wd: wdValue.ptr, t: nil, wp: wpValue.ptr, xhat: y.ptr,
                                                      dY: dY.ptr, dYScale: ctx.outputScale, invStd: invStd.ptr, meanDy: means.ptr, meanDyXhat: means.ptr + cOut,
                                                      dX: dX?.ptr, dXAddend: dXAddend.map { UnsafePointer($0.ptr) }, dWd: dWd?.ptr, dWp: dWp?.ptr,
                                                      reluInput: reluInput, workspace: ws.ptr)
                    }
                }
                self.flops += n * cOut * hw * 7 + gp.forwardFlops * ((needT ? 1 : 0) + (needWp ? 1 : 0))
                    + gd.forwardFlops * ((needX ? 1 : 0) + (needWd ? 1 : 0))
                if dWpIsTemp, let dWp { try ctx.accumulate(2, dWp) }
                return
            }
            // Off the depthwise fast path: dT whole, then the depthwise backward from it.
            let dT = needT ? try self.gradTensor(gd.outputShape) : nil
            do {
                let ws = try Tensor(shape: [Kernels.pointwiseBatchNormBackwardFloats(cIn: gp.cIn, cOut: cOut, hw: hw, chunks: chunks, needWeightGrad: needWp)],
                                    category: .workspace, accountant: self.accountant)
                if ctx.computing {
                    Kernels.pointwiseBatchNormBackward(n: n, cIn: gp.cIn, cOut: cOut, hw: hw, t: t!.ptr, w: wpValue.ptr, xhat: y.ptr, dY: dY.ptr, dYScale: ctx.outputScale,
                                                       invStd: invStd.ptr, meanDy: means.ptr, meanDyXhat: means.ptr + cOut,
                                                       dT: dT?.ptr, dW: dWp?.ptr, workspace: ws.ptr)
                }
            }
            self.flops += n * cOut * hw * 7 + gp.forwardFlops * ((needT ? 1 : 0) + (needWp ? 1 : 0))
            if dWpIsTemp, let dWp { try ctx.accumulate(2, dWp) }
            guard let dT else { return }
            try self.conv2dBackward(gd, x: xValue, w: wdValue, dY: dT, ctx, xIndex: 0, wIndex: 1, reluInput: reluInput)   // the depthwise backward, from dT
        }
    }
}
