// Differentiable batch normalisation (PyTorch semantics). Training mode normalises with the batch
// statistics (biased variance) and updates the running statistics with the unbiased variance;
// evaluation mode normalises with the running statistics. Saves x and the per-channel mean and
// 1/√(var + eps) (two small activation tensors); γ and β are read from their variables.

import Foundation

/// Where a forward without tape adds an op's last output instead of storing it: target += scale·y
/// (a node's sum of its candidates; EspalierHost's PluginOp.accumulate). The op returns the target.
public struct ForwardSink {
    public let target: Tensor
    public let scale: Float
    public init(target: Tensor, scale: Float) { self.target = target; self.scale = scale }
}

extension Graph {
    /// Batch norm over dim 1 of x (N, C, …). γ, β: (C) or nil (no affine map). Running statistics:
    /// (C) tensors updated in place in training mode (running = (1−momentum)·running + momentum·batch);
    /// pass nil for both to always use batch statistics (track_running_stats=False).
    /// Uses batch statistics when `training` is true or there are no running statistics.
    /// With `sink` (no tape only): y is added into the sink's target as it is made, never stored.
    public func batchNorm(_ x: Variable, gamma: Variable?, beta: Variable?, runningMean: Tensor?, runningVar: Tensor?,
                          momentum: Float = 0.1, eps: Float = 1e-5, sink: ForwardSink? = nil) throws -> Variable {
        guard x.shape.count >= 2 else { throw EspalierError.shapeMismatch("batchNorm needs x (N, C, …); got \(x.shape)") }
        let shape = x.shape
        try checkSink(sink, shape)
        let n = shape[0], c = shape[1], hw = shape.dropFirst(2).reduce(1, *)
        for (name, t) in [("gamma", gamma?.value), ("beta", beta?.value), ("runningMean", runningMean), ("runningVar", runningVar)] {
            if let t, t.count != c { throw EspalierError.shapeMismatch("batchNorm \(name) \(t.shape) for \(c) channels") }
        }
        guard (runningMean == nil) == (runningVar == nil) else {
            throw EspalierError.invalidArgument("batchNorm needs both running statistics or neither")
        }
        let batchStatistics = training || runningMean == nil
        if batchStatistics && n * hw <= 1 {
            throw EspalierError.invalidArgument("batchNorm with batch statistics needs more than one value per channel; got \(shape)")
        }

        // Ghost batch norm (batchNormGroups): slices of samples, each normalised with its own statistics.
        let groups = batchStatistics ? batchNormGroups : 1
        if groups > 1 && n < groups {
            throw EspalierError.invalidArgument("batch norm in \(groups) groups (--bn-groups) needs at least \(groups) samples; got \(n)")
        }
        let slices = (0..<groups).map { Shards.range(part: $0, of: groups, count: n) }
        let y = try sink?.target ?? output(shape)
        // mean, invStd: (G, C), the statistics of each slice
        let mean = try Tensor(shape: [groups * c], category: .activations, accountant: accountant)
        let invStd = try Tensor(shape: [groups * c], category: .activations, accountant: accountant)
        if computing {
            if batchStatistics {
                // The variance goes into invStd first, and is converted in place.
                for (g, r) in slices.enumerated() {
                    Kernels.batchNormStatistics(x.value.ptr + r.lowerBound * c * hw, n: r.count, c: c, hw: hw,
                                                mean: mean.ptr + g * c, variance: invStd.ptr + g * c)
                }
                if training, !isReplaying, let rm = runningMean, let rv = runningVar {
                    let momentum = runningMomentum(rm, momentum)
                    if groups == 1 {
                        updateRunningStatistics(rm, rv, mean: mean, variance: invStd, count: n * hw, momentum: momentum)
                    } else {
                        for ch in 0..<c {
                            var m: Float = 0, v: Float = 0
                            for (g, r) in slices.enumerated() {
                                m += mean[g * c + ch]
                                v += invStd[g * c + ch] * Float(r.count * hw) / Float(max(r.count * hw - 1, 1))
                            }
                            rm[ch] = (1 - momentum) * rm[ch] + momentum * (m / Float(groups))
                            rv[ch] = (1 - momentum) * rv[ch] + momentum * (v / Float(groups))
                        }
                    }
                }
                for i in 0..<(groups * c) { invStd[i] = 1 / (invStd[i] + eps).squareRoot() }
            } else if let rm = runningMean, let rv = runningVar {
                for ch in 0..<c {
                    mean[ch] = rm[ch]
                    invStd[ch] = 1 / (rv[ch] + eps).squareRoot()
                }
            }
            for (g, r) in slices.enumerated() {
                Kernels.batchNormApply(x.value.ptr + r.lowerBound * c * hw, n: r.count, c: c, hw: hw, mean: mean.ptr + g * c,
                                       invStd: invStd.ptr + g * c, gamma: gamma?.value.ptr, beta: beta?.value.ptr,
                                       y: y.ptr + r.lowerBound * c * hw, accumulate: sink?.scale)
            }
        }
        let count = n * c * hw
        flops += count * (batchStatistics ? 5 : 2)
        if sink != nil { return untaped(y) }

        var inputs = [x]
        var gammaIndex: Int? = nil, betaIndex: Int? = nil
        if let gamma { gammaIndex = inputs.count; inputs.append(gamma) }
        if let beta { betaIndex = inputs.count; inputs.append(beta) }
        // Without an affine map the output is x̂ itself: keep it instead of the input, so that the
        // input (often a convolution's output used nowhere else) is freed now. In evaluation mode
        // without affine nothing needs keeping.
        let keepOutput = gamma == nil && beta == nil
        let saved: Tensor? = keepOutput ? (batchStatistics ? y : nil) : x.value
        let gammaValue = gamma?.value
        // dY may come with a pending mixing weight (ctx.outputScale), multiplied as it is read, and
        // (without affine map, batch statistics in one group) with its channel sums, which are then
        // this backward's sums.
        let takesSums = keepOutput && batchStatistics && groups == 1
        return record(y, inputs: inputs, reads: takesSums ? [.scaled, .channelSums] : .scaled) { [unowned self] dY, ctx in
            let handed = ctx.outputChannelSums
            // γ and β gradients: into the parameter's buffer directly, else a zeroed temporary.
            func grad(_ index: Int?) throws -> (Tensor?, Bool) {
                guard let index, ctx.needs(index) else { return (nil, false) }
                if let pg = try ctx.parameterGrad(index) { return (pg, false) }
                return (try self.gradTensor([c], zeroed: true), true)
            }
            // Without an affine map, with batch statistics in one group, and where x's op reads it so
            // (a pool's backward): only the sums pass here; x's op makes each plane of dX as it reads it.
            if keepOutput, batchStatistics, groups == 1, let saved, ctx.takesBatchNormGradient(0) {
                let sums = try self.gradTensor([2 * c]), coefficients = try self.gradTensor([3 * c])
                if ctx.computing {
                    sums.fill(-0.0)   // −0 + s = s for every s: the sums exactly as the kernel makes them
                    Kernels.batchNormBackward(saved.ptr, dY: dY.ptr, dYScale: ctx.outputScale, n: n, c: c, hw: hw, mean: mean.ptr,
                                              invStd: invStd.ptr, gamma: nil, batchStatistics: true, dX: nil, dGamma: sums.ptr + c,
                                              dBeta: sums.ptr, normalizedInput: true, handedSums: handed)
                    Kernels.BatchNormGradientSource.makeCoefficients(invStd: invStd.ptr, sums: sums.ptr, c: c, count: n * hw, into: coefficients.ptr)
                }
                self.flops += count * 7
                ctx.handOn(0, batchNormGradient: PendingBatchNormGradient(dY: dY, xhat: saved, coefficients: coefficients,
                                                                          dYScale: ctx.outputScale, n: n, c: c, hw: hw))
                return
            }
            let (dGamma, dGammaIsTemp) = try grad(gammaIndex)
            let (dBeta, dBetaIsTemp) = try grad(betaIndex)
            let dX = ctx.needs(0) ? try self.gradTensor(shape) : nil
            if ctx.computing {
                // With nothing saved (evaluation, no affine) the kernel reads dY in place of x: only dX = invStd·dY is computed.
                for (g, r) in slices.enumerated() {
                    let at = r.lowerBound * c * hw
                    Kernels.batchNormBackward((saved ?? dY).ptr + at, dY: dY.ptr + at, dYScale: ctx.outputScale, n: r.count, c: c, hw: hw, mean: mean.ptr + g * c,
                                              invStd: invStd.ptr + g * c, gamma: gammaValue?.ptr, batchStatistics: batchStatistics,
                                              dX: dX.map { $0.ptr + at }, dGamma: dGamma?.ptr, dBeta: dBeta?.ptr, normalizedInput: keepOutput,
                                              handedSums: handed)
                }
            }
            self.flops += count * (batchStatistics ? 7 : 4)
            if let dX { try ctx.accumulate(0, dX) }
            if dGammaIsTemp, let dGamma, let gammaIndex { try ctx.accumulate(gammaIndex, dGamma) }
            if dBetaIsTemp, let dBeta, let betaIndex { try ctx.accumulate(betaIndex, dBeta) }
        }
    }

    /// A sink is for a forward without tape, and takes the op's output shape.
    func checkSink(_ sink: ForwardSink?, _ shape: [Int]) throws {
        guard let sink else { return }
        guard !isRecording else { throw EspalierError.invalidArgument("an output sink is for a forward without tape (noGrad): a taped op must store its output") }
        guard sink.target.shape == shape else { throw EspalierError.shapeMismatch("an output sink of \(sink.target.shape) for an output of \(shape)") }
    }

    /// The momentum a running-statistics update of `rm` uses: `momentum`, or 1/k for the k-th
    /// batch while recalibrating (`batchNormRecalibration`: the first batch replaces, the k-th weighs 1/k).
    func runningMomentum(_ rm: Tensor, _ momentum: Float) -> Float {
        guard batchNormRecalibration != nil else { return momentum }
        let key = ObjectIdentifier(rm.storage), seen = batchNormRecalibration![key, default: 0]
        batchNormRecalibration![key] = seen + 1
        return 1 / Float(seen + 1)
    }

    /// running = (1 − momentum)·running + momentum·batch, with the unbiased variance of `count` values.
    func updateRunningStatistics(_ rm: Tensor, _ rv: Tensor, mean: Tensor, variance: Tensor, count: Int, momentum: Float) {
        let unbias = Float(count) / Float(count - 1)
        for ch in 0..<rm.count {
            rm[ch] = (1 - momentum) * rm[ch] + momentum * mean[ch]
            rv[ch] = (1 - momentum) * rv[ch] + momentum * variance[ch] * unbias
        }
    }
}
