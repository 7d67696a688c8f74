// Differentiable pooling: max (saves its input, recomputes the argmax in backward), average
// (saves nothing) and global average (N, C, H, W) → (N, C) (saves nothing).

import Foundation

extension Graph {
    func poolGeometry(_ x: Variable, kernel: Int, stride: Int, padding: Int, _ op: String) throws -> PoolGeometry {
        guard x.shape.count == 4 else { throw EspalierError.shapeMismatch("\(op) needs x (N,C,H,W); got \(x.shape)") }
        let g = PoolGeometry(n: x.shape[0], c: x.shape[1], h: x.shape[2], w: x.shape[3], k: kernel, stride: stride, padding: padding)
        if let problem = g.validate() { throw EspalierError.invalidArgument("\(op): \(problem)") }
        return g
    }

    /// Max pool k×k (padding counts as −∞). Saves x; backward recomputes the argmax (first max wins).
    public func maxPool2d(_ x: Variable, kernel: Int, stride: Int, padding: Int = 0) throws -> Variable {
        let g = try poolGeometry(x, kernel: kernel, stride: stride, padding: padding, "maxPool2d")
        let y = try output(g.outputShape)
        if computing { Kernels.maxPool2dForward(g, x: x.value.ptr, y: y.ptr) }
        let work = g.planes * g.hOut * g.wOut * g.k * g.k
        flops += work
        let xValue = x.value
        // dY may be a batch norm's pending input gradient (ctx.batchNormGradient), made plane by plane as it is read.
        return record(y, inputs: [x], reads: .batchNormInput) { [unowned self] dY, ctx in
            // Added into x's gradient so far as it is stored (no temporary and add pass).
            guard let (dX, addend) = try ctx.accumulationTarget(0) else { return }
            if ctx.computing {
                Kernels.maxPool2dBackward(g, x: xValue.ptr, dY: dY.ptr, dX: dX.ptr, addend: addend.map { UnsafePointer($0.ptr) },
                                          dYSource: ctx.batchNormGradient?.source)
            }
            self.flops += work
        }
    }

    /// Average pool k×k; by default the divisor is the number of in-image elements
    /// (count_include_pad=False). Saves nothing.
    public func avgPool2d(_ x: Variable, kernel: Int, stride: Int, padding: Int = 0, countIncludePad: Bool = false) throws -> Variable {
        let g = try poolGeometry(x, kernel: kernel, stride: stride, padding: padding, "avgPool2d")
        let y = try output(g.outputShape)
        if computing { Kernels.avgPool2dForward(g, countIncludePad: countIncludePad, x: x.value.ptr, y: y.ptr) }
        let work = g.planes * g.hOut * g.wOut * g.k * g.k
        flops += work
        return record(y, inputs: [x], reads: .batchNormInput) { [unowned self] dY, ctx in
            guard let (dX, addend) = try ctx.accumulationTarget(0) else { return }
            if ctx.computing {
                Kernels.avgPool2dBackward(g, countIncludePad: countIncludePad, dY: dY.ptr, dX: dX.ptr, addend: addend.map { UnsafePointer($0.ptr) },
                                          dYSource: ctx.batchNormGradient?.source)
            }
            self.flops += work
        }
    }

    /// Global average pool: (N, C, H, W) → (N, C). Saves nothing.
    public func globalAvgPool(_ x: Variable) throws -> Variable {
        guard x.shape.count == 4 else { throw EspalierError.shapeMismatch("globalAvgPool needs x (N,C,H,W); got \(x.shape)") }
        let inShape = x.shape
        let planes = inShape[0] * inShape[1], hw = inShape[2] * inShape[3]
        guard planes > 0, hw > 0 else { throw EspalierError.invalidArgument("globalAvgPool of an empty tensor \(inShape)") }
        let y = try output([inShape[0], inShape[1]])
        if computing { Kernels.globalAvgPoolForward(x.value.ptr, y: y.ptr, planes: planes, hw: hw) }
        flops += planes * hw
        return record(y, inputs: [x]) { [unowned self] dY, ctx in
            let dX = try self.gradTensor(inShape)
            if ctx.computing { Kernels.globalAvgPoolBackward(dY.ptr, dX: dX.ptr, planes: planes, hw: hw) }
            self.flops += planes * hw
            try ctx.accumulate(0, dX)
        }
    }
}
