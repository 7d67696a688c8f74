// The differentiable convolution: picks the kernel path from the geometry, allocates the
// output and the path's workspace through the accountant, and saves the input and the weight
// for backward (the input is usually the previous op's saved output, so it costs nothing extra).
// `reluInput` computes conv(relu(x), w): the kernels apply the ReLU themselves, forward and
// backward, on the depthwise fast path, the 1×1 path and im2col (relu(x) is never stored: the
// DARTS ops' ReLU → depthwise, the cells' ReLU → 1×1 preprocessing and factorized reduce); off the
// depthwise fast path (its direct loops) it is the ReLU op followed by the convolution.

import Foundation

extension Graph {
    /// conv2d(x, w): x (N, Cin, H, W), w (Cout, Cin/groups, KH, KW) → (N, Cout, Ho, Wo).
    /// With `window`: conv2d(crop(x, window), w), read in place (the crop is never stored; the
    /// gradient is x's shape, zero outside the window).
    public func conv2d(_ x: Variable, _ w: Variable, stride: Int = 1, padding: Int = 0,
                       dilation: Int = 1, groups: Int = 1, reluInput: Bool = false, window: ConvWindow? = nil) throws -> Variable {
        guard let g = ConvGeometry(input: x.shape, weight: w.shape, stride: stride, padding: padding, dilation: dilation,
                                   groups: groups, window: window) else {
            throw EspalierError.shapeMismatch("conv2d needs x (N,C,H,W) and w (Cout,Cin/g,KH,KW); got \(x.shape) and \(w.shape)")
        }
        if let problem = g.validate() { throw EspalierError.invalidArgument(problem) }
        guard w.shape[1] == g.cInPerGroup else {
            throw EspalierError.shapeMismatch("conv2d weight \(w.shape) expects \(w.shape[1] * groups) input channels, got \(g.cIn)")
        }
        if reluInput && !readsReLUInside(g) {
            return try conv2d(relu(x), w, stride: stride, padding: padding, dilation: dilation, groups: groups, window: window)
        }
        let y = try output(g.outputShape)
        let wsCount = g.forwardWorkspaceFloats(reluInput: reluInput)
        if wsCount > 0 {
            let ws = try Tensor(shape: [wsCount], category: .workspace, accountant: accountant)
            if computing { Kernels.conv2dForward(g, x: x.value.ptr, w: w.value.ptr, y: y.ptr, workspace: ws.ptr, reluInput: reluInput) }
        } else if computing {
            Kernels.conv2dForward(g, x: x.value.ptr, w: w.value.ptr, y: y.ptr, workspace: nil)
        }
        flops += g.forwardFlops
        let xValue = x.value, wValue = w.value
        return record(y, inputs: [x, w]) { [unowned self] dY, ctx in
            try self.conv2dBackward(g, x: xValue, w: wValue, dY: dY, ctx, xIndex: 0, wIndex: 1, reluInput: reluInput)
        }
    }

    /// Whether conv2d(x, w, reluInput: true) of geometry `g` reads relu(x) inside its kernels (else it
    /// applies `relu` first, shared with x's other readers through `relu`'s cache). Where it does,
    /// two convolutions of relu(x) each make it again (a pass over a sample in the cache) rather
    /// than store it, and each masks and adds its dX into x's gradient as it stores it.
    public func readsReLUInside(_ g: ConvGeometry) -> Bool { g.supportsReLUInput }

    /// conv2d's backward from dY, for its input at `xIndex` and its weight at `wIndex` of `ctx`:
    /// dX (added into the input's gradient as it is stored, where the kernels can), and dW
    /// straight into the parameter's gradient when it is one (else a zeroed temporary).
    func conv2dBackward(_ g: ConvGeometry, x: Tensor, w: Tensor, dY: Tensor, _ ctx: BackwardContext, xIndex: Int, wIndex: Int,
                        reluInput: Bool) throws {
        try withConvolutionGradients(g, ctx, xIndex: xIndex, wIndex: wIndex) { dX, dXAddend, dW in
            let wsCount = g.backwardWorkspaceFloats(needInputGrad: dX != nil, needWeightGrad: dW != nil, reluInput: reluInput)
            let ws = wsCount > 0 ? try Tensor(shape: [wsCount], category: .workspace, accountant: accountant) : nil
            if ctx.computing {
                Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX?.ptr, dW: dW?.ptr, workspace: ws?.ptr, reluInput: reluInput,
                                       dXAddend: dXAddend.map { UnsafePointer($0.ptr) })
            }
            flops += g.forwardFlops * ((dX != nil ? 1 : 0) + (dW != nil ? 1 : 0))
        }
    }

    /// The gradient buffers of a convolution's input (at `xIndex`) and weight (at `wIndex`) for
    /// `body`, which runs the backward kernels into them: dX is the input's accumulation target
    /// where the geometry's kernels add into it (dXAddend, the gradient so far, added as dX is
    /// stored), else a fresh tensor accumulated afterwards; dW is the parameter's own gradient,
    /// else a zeroed temporary accumulated afterwards. Each is nil where `ctx` needs no gradient.
    func withConvolutionGradients(_ g: ConvGeometry, _ ctx: BackwardContext, xIndex: Int, wIndex: Int,
                                  _ body: (_ dX: Tensor?, _ dXAddend: Tensor?, _ dW: Tensor?) throws -> Void) throws {
        let needX = ctx.needs(xIndex), needW = ctx.needs(wIndex)
        let target = needX && g.addsIntoInputGradient ? try ctx.accumulationTarget(xIndex) : nil
        let dX = try target?.out ?? (needX ? gradTensor([g.n, g.cIn, g.h, g.w]) : nil)
        var dW: Tensor? = nil
        var dWIsTemp = false
        if needW {
            if let pg = try ctx.parameterGrad(wIndex) { dW = pg } else { dW = try gradTensor(g.weightShape, zeroed: true); dWIsTemp = true }
        }
        try body(dX, target?.addend, dW)
        if let dX, target == nil { try ctx.accumulate(xIndex, dX) }
        if dWIsTemp, let dW { try ctx.accumulate(wIndex, dW) }
    }
}
