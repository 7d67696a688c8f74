// Differentiable fully connected layer, softmax cross-entropy loss and the scalar mean.
// linear saves x and W; the loss saves its probabilities (N, K); mean saves nothing.

import Foundation

extension Graph {
    /// y (N, out) = x·Wᵀ + b. x is (N, in) or (N, …) with in = the product of the trailing
    /// dimensions (flattened); W (out, in); b (out) or nil.
    public func linear(_ x: Variable, weight: Variable, bias: Variable? = nil) throws -> Variable {
        guard x.shape.count >= 2, weight.shape.count == 2 else {
            throw EspalierError.shapeMismatch("linear needs x (N, in) and W (out, in); got \(x.shape) and \(weight.shape)")
        }
        let n = x.shape[0], inF = x.shape.dropFirst().reduce(1, *)
        let outF = weight.shape[0]
        guard weight.shape[1] == inF else {
            throw EspalierError.shapeMismatch("linear weight \(weight.shape) for \(inF) input features (x \(x.shape))")
        }
        if let bias, bias.value.count != outF {
            throw EspalierError.shapeMismatch("linear bias \(bias.shape) for \(outF) output features")
        }
        let y = try output([n, outF])
        if computing {
            Kernels.linearForward(x: x.value.ptr, w: weight.value.ptr, b: bias?.value.ptr, y: y.ptr,
                                  n: n, inFeatures: inF, outFeatures: outF)
        }
        let work = 2 * n * inF * outF
        flops += work + (bias == nil ? 0 : n * outF)
        let xShape = x.shape, xValue = x.value, wValue = weight.value
        let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
        let hasBias = bias != nil
        return record(y, inputs: inputs) { [unowned self] dY, ctx in
            func paramOrTemp(_ i: Int, _ shape: [Int]) throws -> (Tensor?, Bool) {
                guard ctx.needs(i) else { return (nil, false) }
                if let pg = try ctx.parameterGrad(i) { return (pg, false) }
                return (try self.gradTensor(shape, zeroed: true), true)
            }
            let dX = ctx.needs(0) ? try self.gradTensor(xShape) : nil
            let (dW, dWIsTemp) = try paramOrTemp(1, [outF, inF])
            let (dB, dBIsTemp) = hasBias ? try paramOrTemp(2, [outF]) : (nil, false)
            if ctx.computing {
                Kernels.linearBackward(x: xValue.ptr, w: wValue.ptr, dY: dY.ptr, dX: dX?.ptr, dW: dW?.ptr, dB: dB?.ptr,
                                       n: n, inFeatures: inF, outFeatures: outF)
            }
            self.flops += work * ((dX != nil ? 1 : 0) + (dW != nil ? 1 : 0))
            if let dX { try ctx.accumulate(0, dX) }
            if dWIsTemp, let dW { try ctx.accumulate(1, dW) }
            if dBIsTemp, let dB { try ctx.accumulate(2, dB) }
        }
    }

    /// Mean softmax cross-entropy of logits (N, K) against labels (N, each in 0..<K); shape [1].
    /// Label smoothing ε mixes the one-hot target with the uniform one: (1−ε)·onehot + ε/K.
    /// Saves the probabilities; backward dLogits = (p − target)·dLoss/N.
    public func softmaxCrossEntropy(_ logits: Variable, labels: [Int32], labelSmoothing: Float = 0) throws -> Variable {
        guard logits.shape.count == 2 else { throw EspalierError.shapeMismatch("softmaxCrossEntropy needs logits (N, K); got \(logits.shape)") }
        let n = logits.shape[0], k = logits.shape[1]
        guard n > 0, k > 0 else { throw EspalierError.invalidArgument("softmaxCrossEntropy of empty logits \(logits.shape)") }
        guard labels.count == n else { throw EspalierError.shapeMismatch("softmaxCrossEntropy: \(labels.count) labels for \(n) rows") }
        if let bad = labels.first(where: { $0 < 0 || Int($0) >= k }) {
            throw EspalierError.invalidArgument("softmaxCrossEntropy: label \(bad) outside 0..<\(k)")
        }
        guard labelSmoothing >= 0, labelSmoothing <= 1 else {
            throw EspalierError.invalidArgument("softmaxCrossEntropy: label smoothing \(labelSmoothing) outside [0, 1]")
        }
        let probs = try output([n, k])
        let y = try output([1])
        if computing {
            let loss = labels.withUnsafeBufferPointer {
                Kernels.softmaxCrossEntropyForward(logits: logits.value.ptr, labels: $0.baseAddress!, probs: probs.ptr,
                                                   n: n, k: k, labelSmoothing: labelSmoothing)
            }
            y[0] = Float(loss)
        }
        flops += 5 * n * k
        return record(y, inputs: [logits]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor([n, k])
            if ctx.computing {
                let scale = dY[0] / Float(n)
                labels.withUnsafeBufferPointer {
                    Kernels.softmaxCrossEntropyBackward(probs: probs.ptr, labels: $0.baseAddress!, dLogits: dX.ptr,
                                                        n: n, k: k, labelSmoothing: labelSmoothing, scale: scale)
                }
            }
            self.flops += 2 * n * k
            try ctx.accumulate(0, dX)
        }
    }

    /// The mean of all elements, shape [1].
    public func mean(_ x: Variable) throws -> Variable {
        let count = x.value.count
        guard count > 0 else { throw EspalierError.invalidArgument("mean of an empty tensor \(x.shape)") }
        let y = try output([1])
        if computing { y[0] = Float(Kernels.rowSum(x.value.ptr, count: count) / Double(count)) }
        flops += count
        let shape = x.shape
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(shape)
            if ctx.computing { dX.fill(dY[0] / Float(count)) }
            try ctx.accumulate(0, dX)
        }
    }
}
