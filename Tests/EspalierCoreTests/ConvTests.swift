// Convolution: every tuned path against the naive reference, and gradients against finite differences.

import EspalierCore
import Foundation
import EspalierTestSupport
import XCTest

final class ConvTests: XCTestCase {
    /// Geometries covering each path and the edge cases: stride, padding, dilation, groups, odd sizes.
    static let geometries: [ConvGeometry] = [
        ConvGeometry(n: 3, cIn: 4, h: 5, w: 6, cOut: 5, kh: 1, kw: 1),                                  // pointwise
        ConvGeometry(n: 2, cIn: 7, h: 5, w: 5, cOut: 13, kh: 1, kw: 1),                                 // pointwise, every tail
        ConvGeometry(n: 2, cIn: 3, h: 1, w: 1, cOut: 6, kh: 1, kw: 1),                                  // pointwise on 1×1 planes
        ConvGeometry(n: 2, cIn: 130, h: 3, w: 3, cOut: 5, kh: 1, kw: 1),                                // pointwise past the crossover: OpenBLAS
        ConvGeometry(n: 2, cIn: 3, h: 7, w: 7, cOut: 3, kh: 3, kw: 3, stride: 1, padding: 1, groups: 3),  // depthwise
        ConvGeometry(n: 2, cIn: 3, h: 7, w: 8, cOut: 3, kh: 5, kw: 5, stride: 2, padding: 2, groups: 3),  // depthwise s2
        ConvGeometry(n: 2, cIn: 2, h: 9, w: 9, cOut: 2, kh: 3, kw: 3, stride: 1, padding: 2, dilation: 2, groups: 2), // dilated dw
        ConvGeometry(n: 1, cIn: 2, h: 9, w: 7, cOut: 2, kh: 5, kw: 5, stride: 2, padding: 4, dilation: 2, groups: 2), // dil dw s2
        ConvGeometry(n: 2, cIn: 3, h: 6, w: 5, cOut: 4, kh: 3, kw: 3, stride: 1, padding: 1),            // im2col
        ConvGeometry(n: 2, cIn: 4, h: 6, w: 6, cOut: 6, kh: 3, kw: 3, stride: 2, padding: 0, groups: 2),  // grouped s2
        ConvGeometry(n: 3, cIn: 4, h: 6, w: 6, cOut: 3, kh: 1, kw: 1, stride: 2),                        // 1×1 stride 2
        ConvGeometry(n: 1, cIn: 2, h: 4, w: 4, cOut: 2, kh: 3, kw: 3, padding: 3),                       // padding > k/2
        ConvGeometry(n: 1, cIn: 1, h: 7, w: 7, cOut: 1, kh: 3, kw: 3, padding: 1),                       // 1 channel
    ] + depthwise

    /// Depthwise geometries reaching every specialised kernel of the fast path (k3/k5 × d1/d2 × s1/s2,
    /// odd and even padding, sizes not a multiple of 4, 7×7 planes), its generic kernel and the direct loops.
    static let depthwise: [ConvGeometry] = [
        ConvGeometry(n: 2, cIn: 3, h: 6, w: 9, cOut: 3, kh: 5, kw: 5, stride: 1, padding: 2, groups: 3),                 // k5 d1 s1
        ConvGeometry(n: 2, cIn: 2, h: 7, w: 7, cOut: 2, kh: 5, kw: 5, stride: 1, padding: 4, dilation: 2, groups: 2),    // k5 d2 s1, 7×7
        ConvGeometry(n: 2, cIn: 3, h: 7, w: 7, cOut: 3, kh: 3, kw: 3, stride: 2, padding: 1, groups: 3),                 // k3 d1 s2, odd p
        ConvGeometry(n: 2, cIn: 2, h: 10, w: 11, cOut: 2, kh: 3, kw: 3, stride: 2, padding: 2, dilation: 2, groups: 2),  // k3 d2 s2
        ConvGeometry(n: 1, cIn: 2, h: 8, w: 8, cOut: 2, kh: 5, kw: 5, stride: 2, padding: 4, dilation: 2, groups: 2),    // k5 d2 s2, even W
        ConvGeometry(n: 2, cIn: 2, h: 5, w: 6, cOut: 2, kh: 3, kw: 3, stride: 1, padding: 0, groups: 2),                 // no padding
        ConvGeometry(n: 2, cIn: 2, h: 8, w: 7, cOut: 2, kh: 3, kw: 3, stride: 2, padding: 0, groups: 2),                 // s2 no padding
        ConvGeometry(n: 2, cIn: 2, h: 6, w: 7, cOut: 2, kh: 3, kw: 5, stride: 1, padding: 2, groups: 2),                 // 3×5: generic kernel
        ConvGeometry(n: 2, cIn: 2, h: 7, w: 6, cOut: 2, kh: 3, kw: 5, stride: 2, padding: 1, dilation: 2, groups: 2),    // 3×5 s2 d2: generic
        ConvGeometry(n: 2, cIn: 2, h: 9, w: 10, cOut: 2, kh: 9, kw: 9, stride: 1, padding: 4, groups: 2),                // 9×9 (MergeNAS): generic
        ConvGeometry(n: 2, cIn: 2, h: 10, w: 9, cOut: 2, kh: 9, kw: 9, stride: 2, padding: 4, groups: 2),                // 9×9 s2: generic
        ConvGeometry(n: 2, cIn: 2, h: 7, w: 7, cOut: 2, kh: 3, kw: 3, stride: 1, padding: 3, groups: 2),                 // p > d(k−1): direct
        ConvGeometry(n: 2, cIn: 2, h: 8, w: 9, cOut: 2, kh: 3, kw: 3, stride: 2, padding: 3, groups: 2),                 // s2, p > d(k−1): direct
        ConvGeometry(n: 2, cIn: 2, h: 9, w: 8, cOut: 2, kh: 3, kw: 3, stride: 3, padding: 1, groups: 2),                 // stride 3: direct
    ]

    /// Bench-sized problems (many samples per chunk, both cores busy) on the tuned paths.
    static let large: [ConvGeometry] = [
        ConvGeometry(n: 8, cIn: 16, h: 28, w: 28, cOut: 16, kh: 1, kw: 1),
        ConvGeometry(n: 8, cIn: 16, h: 28, w: 28, cOut: 16, kh: 5, kw: 5, padding: 4, dilation: 2, groups: 16),
        ConvGeometry(n: 6, cIn: 16, h: 28, w: 28, cOut: 16, kh: 3, kw: 3, padding: 1, groups: 16),
        ConvGeometry(n: 5, cIn: 32, h: 14, w: 14, cOut: 32, kh: 5, kw: 5, padding: 2, groups: 32),
        ConvGeometry(n: 4, cIn: 16, h: 28, w: 28, cOut: 16, kh: 3, kw: 3, stride: 2, padding: 2, dilation: 2, groups: 16),
        ConvGeometry(n: 3, cIn: 64, h: 14, w: 14, cOut: 64, kh: 5, kw: 5, stride: 2, padding: 2, groups: 64),
        ConvGeometry(n: 7, cIn: 64, h: 7, w: 7, cOut: 64, kh: 3, kw: 3, padding: 2, dilation: 2, groups: 64),
        ConvGeometry(n: 3, cIn: 32, h: 28, w: 28, cOut: 32, kh: 3, kw: 3, stride: 2, padding: 1, groups: 32),
        ConvGeometry(n: 1, cIn: 16, h: 14, w: 14, cOut: 16, kh: 5, kw: 5, stride: 2, padding: 4, dilation: 2, groups: 16),
    ]

    func testTunedPaths_MatchNaiveReference() throws {
        let acc = MemoryAccountant()
        for (k, g) in (Self.geometries + Self.large).enumerated() {
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(k))
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(100 + k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(200 + k))
            let ws = try Tensor(shape: [max(1, g.forwardWorkspaceFloats())], category: .workspace, accountant: acc)
            let y1 = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let y2 = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y1.ptr, workspace: ws.ptr)
            Kernels.conv2dForwardNaive(g, x: x.ptr, w: w.ptr, y: y2.ptr)
            assertClose(y1.array, y2.array, tol: 1e-5, "forward \(g) [\(g.algorithm)]")

            let bws = try Tensor(shape: [max(1, g.backwardWorkspaceFloats(needInputGrad: true, needWeightGrad: true))],
                                 category: .workspace, accountant: acc)
            let dX1 = try Tensor(shape: x.shape, category: .data, accountant: acc)
            let dX2 = try Tensor(shape: x.shape, category: .data, accountant: acc)
            let dW1 = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)  // backward adds into dW
            let dW2 = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
            Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX1.ptr, dW: dW1.ptr, workspace: bws.ptr)
            Kernels.conv2dBackwardNaive(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX2.ptr, dW: dW2.ptr)
            assertClose(dX1.array, dX2.array, tol: 1e-5, "dX \(g) [\(g.algorithm)]")
            assertClose(dW1.array, dW2.array, tol: 1e-4, "dW \(g) [\(g.algorithm)]")
        }
    }

    func testBackward_EveryGeometry_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (k, g) in Self.geometries.enumerated() {
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(k))
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(50 + k))
            try GradCheck().check("conv \(g)", inputs: [x, w]) { graph, v in
                try graph.conv2d(v[0], v[1], stride: g.stride, padding: g.padding, dilation: g.dilation, groups: g.groups)
            }
        }
    }

    /// dX alone, dW alone and both give the same gradients, whatever the workspace held before,
    /// and no call writes past the workspace it asks for (the accountant charges exactly `*WorkspaceFloats`).
    /// (Pointwise too: its workspace holds wᵀ when dX is wanted, then the dW partials.)
    func testDepthwiseAndPointwise_EachGradientAlone_MatchesBoth_AndStaysInItsWorkspace() throws {
        let acc = MemoryAccountant()
        let guardFloats = 64, sentinel: Float = -12345
        let pointwise = (Self.geometries + Self.large).filter { $0.algorithm == .pointwise }
        for (k, g) in (Self.depthwise + Self.large.filter { $0.algorithm == .depthwise } + pointwise).enumerated() {
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(300 + k))
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(400 + k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(500 + k))
            func workspace(_ floats: Int) throws -> Tensor {
                let ws = try Tensor(shape: [floats + guardFloats], category: .workspace, accountant: acc)
                ws.fill(sentinel)
                return ws
            }
            func checkGuard(_ ws: Tensor, _ floats: Int, _ what: String) {
                let a = ws.array
                XCTAssertTrue(a[floats...].allSatisfy { $0 == sentinel }, "\(what) wrote past its \(floats)-float workspace: \(g)")
            }
            let fFloats = g.forwardWorkspaceFloats()
            let fws = try workspace(fFloats)
            let y = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: fws.ptr)
            checkGuard(fws, fFloats, "forward")

            var results: [(dX: [Float]?, dW: [Float]?)] = []
            for (needX, needW) in [(true, true), (true, false), (false, true)] {
                let floats = g.backwardWorkspaceFloats(needInputGrad: needX, needWeightGrad: needW)
                let ws = try workspace(floats)
                let dX = try Tensor(shape: x.shape, category: .data, accountant: acc)
                let dW = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
                Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: needX ? dX.ptr : nil, dW: needW ? dW.ptr : nil,
                                       workspace: ws.ptr)
                checkGuard(ws, floats, "backward dX \(needX) dW \(needW)")
                results.append((needX ? dX.array : nil, needW ? dW.array : nil))
            }
            assertClose(results[1].dX!, results[0].dX!, tol: 0, "dX alone \(g)")
            assertClose(results[2].dW!, results[0].dW!, tol: 0, "dW alone \(g)")
            // Workspaces started as garbage (the sentinel): the kernels must not read it.
            let dXRef = try Tensor(shape: x.shape, category: .data, accountant: acc)
            let dWRef = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
            Kernels.conv2dBackwardNaive(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dXRef.ptr, dW: dWRef.ptr)
            assertClose(results[0].dX!, dXRef.array, tol: 1e-5, "dX \(g)")
            assertClose(results[0].dW!, dWRef.array, tol: 1e-4, "dW \(g)")
        }
    }

    /// ReLU fused into the convolution's input (relu_conv2d): the kernels against the naive
    /// convolution of relu(x) — dX masked by 1[x > 0] — on every depthwise fast-path, pointwise
    /// (tails, 1×1 planes, past the crossover to OpenBLAS) and im2col geometry (grouped, stride 2,
    /// 1×1 stride 2), each gradient alone and both, inside the workspace they ask for; and dX added
    /// into a gradient so far where the path does that.
    func testReLUInput_MatchesNaiveConvOfReLU_AndStaysInItsWorkspace() throws {
        let acc = MemoryAccountant()
        let guardFloats = 64, sentinel: Float = -12345
        let geometries = (Self.geometries + Self.large).filter(\.supportsReLUInput)
        XCTAssertGreaterThanOrEqual(geometries.count, 20)
        XCTAssertEqual(Set(geometries.map(\.algorithm)), [.depthwise, .pointwise, .im2col])
        XCTAssertTrue((Self.geometries + Self.large).filter { !$0.supportsReLUInput }.allSatisfy { $0.algorithm == .depthwise },
                      "only the direct depthwise loops take no ReLU-fused input")
        XCTAssertTrue(geometries.contains { $0.algorithm == .pointwise && !Kernels.pointwiseUsesOwnKernel(cIn: $0.cIn, cOut: $0.cOut) })
        for (k, g) in geometries.enumerated() {
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(600 + k))   // about half negative
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(700 + k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(800 + k))
            let r = try Tensor(shape: x.shape, category: .data, accountant: acc)
            for i in 0..<x.count { r[i] = max(x[i], 0) }
            let fFloats = g.forwardWorkspaceFloats(reluInput: true)
            let fws = try Tensor.filled([fFloats + guardFloats], value: sentinel, category: .workspace, accountant: acc)
            let y = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let yRef = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: fws.ptr, reluInput: true)
            Kernels.conv2dForwardNaive(g, x: r.ptr, w: w.ptr, y: yRef.ptr)
            assertClose(y.array, yRef.array, tol: 1e-5, "forward relu \(g)")
            XCTAssertTrue(fws.array[fFloats...].allSatisfy { $0 == sentinel }, "forward wrote past its workspace: \(g)")

            let dXRef = try Tensor(shape: x.shape, category: .data, accountant: acc)
            let dWRef = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
            Kernels.conv2dBackwardNaive(g, x: r.ptr, w: w.ptr, dY: dY.ptr, dX: dXRef.ptr, dW: dWRef.ptr)
            for i in 0..<x.count where x[i] <= 0 { dXRef[i] = 0 }
            for (needX, needW) in [(true, true), (true, false), (false, true)] {
                let floats = g.backwardWorkspaceFloats(needInputGrad: needX, needWeightGrad: needW, reluInput: true)
                let ws = try Tensor.filled([floats + guardFloats], value: sentinel, category: .workspace, accountant: acc)
                let dX = try Tensor(shape: x.shape, category: .data, accountant: acc)
                let dW = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
                Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: needX ? dX.ptr : nil, dW: needW ? dW.ptr : nil,
                                       workspace: ws.ptr, reluInput: true)
                XCTAssertTrue(ws.array[floats...].allSatisfy { $0 == sentinel }, "backward wrote past its workspace: \(g)")
                if needX { assertClose(dX.array, dXRef.array, tol: 1e-5, "dX relu \(g) (\(needX), \(needW))") }
                if needW { assertClose(dW.array, dWRef.array, tol: 1e-4, "dW relu \(g) (\(needX), \(needW))") }
            }
            // dX added to a gradient so far as it is stored: from another tensor, and in place. The
            // masked-out lanes keep the gradient so far; each value is that gradient + dX, the same
            // float addition the graph's addInPlace of a temporary made, so bit for bit.
            guard g.addsIntoInputGradient else { XCTAssertEqual(g.algorithm, .im2col); continue }
            for relu in [true, false] {
                let floats = g.backwardWorkspaceFloats(needInputGrad: true, needWeightGrad: false, reluInput: relu)
                let ws = try Tensor(shape: [max(1, floats)], category: .workspace, accountant: acc)
                let plain = try Tensor(shape: x.shape, category: .data, accountant: acc)
                Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: plain.ptr, dW: nil, workspace: ws.ptr, reluInput: relu)
                let before = try randomTensor(x.shape, acc, seed: UInt64(850 + k))
                let expected = zip(before.array, plain.array).map { $0 + $1 }
                let separate = try Tensor(shape: x.shape, category: .data, accountant: acc)
                Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: separate.ptr, dW: nil, workspace: ws.ptr, reluInput: relu,
                                       dXAddend: before.ptr)
                XCTAssertEqual(separate.array, expected, "dX + a gradient so far, relu \(relu), \(g)")
                Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: before.ptr, dW: nil, workspace: ws.ptr, reluInput: relu,
                                       dXAddend: before.ptr)
                XCTAssertEqual(before.array, expected, "dX added in place, relu \(relu), \(g)")
            }
        }
    }

    /// A value read by two depthwise convolutions (one with its ReLU fused) and by another op: the
    /// convolutions add their dX into its gradient as they store it, whether that gradient is new,
    /// one the other op handed over, or already their own; in either order of the three the sum
    /// matches finite differences.
    func testDepthwiseInputGradient_AddedWhereItIsMade_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let g = Self.depthwise[0]                       // stride 1, same size: the three outputs add
        XCTAssertEqual(g.outputShape, [g.n, g.cIn, g.h, g.w])
        XCTAssertTrue(g.addsIntoInputGradient)
        let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: 1200)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = x[i] < 0 ? -0.1 : 0.1 }
        let w1 = try randomTensor(g.weightShape, acc, seed: 1201), w2 = try randomTensor(g.weightShape, acc, seed: 1202)
        for scaleFirst in [false, true] {
            try GradCheck().check("depthwise dX added where it is made, scale recorded first: \(scaleFirst)", inputs: [x, w1, w2]) { graph, v in
                func conv(_ w: Variable, relu: Bool) throws -> Variable {
                    try graph.conv2d(v[0], w, stride: g.stride, padding: g.padding, dilation: g.dilation, groups: g.groups, reluInput: relu)
                }
                // Backward runs in reverse: the op recorded last hands x its gradient first.
                let early = scaleFirst ? try graph.scale(v[0], by: 2) : nil
                let a = try conv(v[1], relu: false), b = try conv(v[2], relu: true)
                let c = try early ?? graph.scale(v[0], by: 2)
                return try graph.add(graph.add(a, b), c)
            }
        }
    }

    /// The graph op: gradients against finite differences on the depthwise and 1×1 paths, and
    /// relu(x) is never stored.
    func testReLUConv2d_Gradients_AndNoReLUTensorKept() throws {
        let acc = MemoryAccountant()
        let cases = [Self.depthwise[0], Self.depthwise[3], Self.geometries[0], Self.geometries[5]]   // dw s1, dw s2 d2; 1×1, dw k5 s2
        for (k, g) in cases.enumerated() {
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(900 + k))
            // Keep inputs away from the ReLU's kink so finite differences do not straddle it.
            for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = x[i] < 0 ? -0.1 : 0.1 }
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(950 + k))
            try GradCheck().check("relu_conv \(g)", inputs: [x, w]) { graph, v in
                try graph.conv2d(v[0], v[1], stride: g.stride, padding: g.padding, dilation: g.dilation, groups: g.groups, reluInput: true)
            }
        }
        // Saved for backward by the fused op: its output only (x and w belong to the caller).
        let g = Self.large[2]
        let unfused = try Self.keptBytes(g) { graph, x, w in try graph.conv2d(try graph.relu(x), w, padding: g.padding, groups: g.groups) }
        let fused = try Self.keptBytes(g) { graph, x, w in try graph.conv2d(x, w, padding: g.padding, groups: g.groups, reluInput: true) }
        XCTAssertEqual(unfused - fused, g.n * g.cIn * g.h * g.w * 4, "the fused op keeps no relu(x): \(unfused) vs \(fused)")
    }

    /// A 1×1 convolution of relu(x) reads x: each sample's relu(x) is made in its chunk's scratch
    /// plane. The kernel gives the bits of the convolution of a stored relu(x), on every pointwise
    /// geometry (tails, 1×1 planes, one sample, past the crossover to OpenBLAS), and stays in its
    /// workspace. Without tape the graph op's peak is lower by exactly relu(x)'s bytes less the
    /// scratch planes'. While recording it is folded too: the tape's gradients are the
    /// composition's, bit for bit.
    func testPointwiseReLUInput_IsTheConvOfReLU_AndKeepsNoReLU() throws {
        let acc = MemoryAccountant()
        let guardFloats = 64, sentinel: Float = -12345
        let geometries = (Self.geometries + Self.large).filter { $0.algorithm == .pointwise }
            + [ConvGeometry(n: 1, cIn: 9, h: 7, w: 5, cOut: 4, kh: 1, kw: 1), ConvGeometry(n: 11, cIn: 8, h: 14, w: 14, cOut: 16, kh: 1, kw: 1)]
        XCTAssertGreaterThanOrEqual(geometries.count, 6)
        XCTAssertTrue(geometries.contains { !Kernels.pointwiseUsesOwnKernel(cIn: $0.cIn, cOut: $0.cOut) }, "no geometry past the crossover")
        for (k, g) in geometries.enumerated() {
            XCTAssertTrue(g.supportsReLUInput, "\(g)")
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(1600 + k))   // about half negative
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(1700 + k))
            let r = try Tensor(shape: x.shape, category: .data, accountant: acc)
            for i in 0..<x.count { r[i] = max(x[i], 0) }
            let floats = g.forwardWorkspaceFloats(reluInput: true)
            XCTAssertEqual(floats, Parallel.disjointChunkCount(g.n) * g.cIn * g.h * g.w)
            let ws = try Tensor.filled([floats + guardFloats], value: sentinel, category: .workspace, accountant: acc)
            let y = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let yOfReLU = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let yNaive = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: ws.ptr, reluInput: true)
            Kernels.conv2dForward(g, x: r.ptr, w: w.ptr, y: yOfReLU.ptr, workspace: nil)
            Kernels.conv2dForwardNaive(g, x: r.ptr, w: w.ptr, y: yNaive.ptr)
            XCTAssertEqual(y.array.map(\.bitPattern), yOfReLU.array.map(\.bitPattern), "conv of relu(x), \(g)")
            assertClose(y.array, yNaive.array, tol: 1e-4, "naive conv of relu(x), \(g)")
            XCTAssertTrue(ws.array[floats...].allSatisfy { $0 == sentinel }, "forward wrote past its workspace: \(g)")
        }

        // The graph op without tape: the same bits, and the peak lower by relu(x) less the scratch
        // (a batch of many more samples than chunks, so that the two differ).
        let g = ConvGeometry(n: 40, cIn: 16, h: 14, w: 14, cOut: 16, kh: 1, kw: 1)
        XCTAssertGreaterThan(g.n, 2 * Parallel.disjointChunkCount(g.n))
        func forwardPeak(fold: Bool) throws -> (peak: Int, y: [Float]) {
            let acc = MemoryAccountant()
            let graph = Graph(accountant: acc)
            let x = graph.constant(try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: 1800))
            let w = graph.constant(try randomTensor(g.weightShape, acc, seed: 1801))
            acc.resetPeak()
            let y = try graph.noGrad { fold ? try graph.conv2d(x, w, reluInput: true) : try graph.conv2d(try graph.relu(x), w) }
            return (acc.peakTotal, y.value.array)
        }
        let folded = try forwardPeak(fold: true), unfolded = try forwardPeak(fold: false)
        XCTAssertEqual(folded.y.map(\.bitPattern), unfolded.y.map(\.bitPattern))
        XCTAssertEqual(unfolded.peak - folded.peak, (g.n - Parallel.disjointChunkCount(g.n)) * g.cIn * g.h * g.w * 4,
                       "without tape the 1×1 convolution keeps no relu(x): \(unfolded.peak) vs \(folded.peak)")

        // While recording: folded too (relu(x) is made again in backward for dW, dX masked as it is
        // stored), and the gradients are the composition's, bit for bit.
        func gradients(fold: Bool) throws -> [[Float]] {
            let acc = MemoryAccountant()
            let graph = Graph(accountant: acc)
            let x = graph.leaf(try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: 1802))
            let w = graph.leaf(try randomTensor(g.weightShape, acc, seed: 1803))
            let y = fold ? try graph.conv2d(x, w, reluInput: true) : try graph.conv2d(try graph.relu(x), w)
            try graph.backward(y, gradient: try randomTensor(g.outputShape, acc, seed: 1804))
            return [graph.gradient(of: x)!.array, graph.gradient(of: w)!.array]
        }
        XCTAssertEqual(try gradients(fold: true).map { $0.map(\.bitPattern) }, try gradients(fold: false).map { $0.map(\.bitPattern) })
    }

    /// While recording, a 1×1 convolution of relu(x) saves no relu(x) (the cells' ReLU → 1×1
    /// preprocessing kept one per cell input); a value read by two of them and by another op gets
    /// each one's masked dX added where it is made, in either order, and the sum matches finite
    /// differences and the ReLU op followed by the convolutions.
    func testPointwiseReLUInput_WhileRecording_KeepsNoReLU_AndAddsItsDXWhereItIsMade() throws {
        let acc = MemoryAccountant()
        let g = ConvGeometry(n: 4, cIn: 16, h: 14, w: 14, cOut: 16, kh: 1, kw: 1)
        let unfused = try Self.keptBytes(g) { graph, x, w in try graph.conv2d(try graph.relu(x), w) }
        let fused = try Self.keptBytes(g) { graph, x, w in try graph.conv2d(x, w, reluInput: true) }
        XCTAssertEqual(unfused - fused, g.n * g.cIn * g.h * g.w * 4, "the 1×1 convolution of relu(x) keeps no relu(x): \(unfused) vs \(fused)")

        let s = ConvGeometry(n: 2, cIn: 3, h: 5, w: 4, cOut: 3, kh: 1, kw: 1)   // cOut = cIn: the outputs add to x
        let x = try randomTensor([s.n, s.cIn, s.h, s.w], acc, seed: 1300)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = x[i] < 0 ? -0.1 : 0.1 }
        let w1 = try randomTensor(s.weightShape, acc, seed: 1301), w2 = try randomTensor(s.weightShape, acc, seed: 1302)
        let r = try randomTensor([s.n, s.cOut, s.h, s.w], acc, seed: 1303)
        for scaleFirst in [false, true] {
            func body(_ graph: Graph, _ v: [Variable], fold: Bool) throws -> Variable {
                func conv(_ w: Variable) throws -> Variable { fold ? try graph.conv2d(v[0], w, reluInput: true) : try graph.conv2d(try graph.relu(v[0]), w) }
                let early = scaleFirst ? try graph.scale(v[0], by: 2) : nil
                let a = try conv(v[1]), b = try conv(v[2])
                let c = try early ?? graph.scale(v[0], by: 2)
                return try graph.add(graph.add(a, b), c)
            }
            try GradCheck().check("1×1 of relu(x) twice, scale recorded first: \(scaleFirst)", inputs: [x, w1, w2]) { graph, v in
                try body(graph, v, fold: true)
            }
            var grads: [[[Float]]] = []
            for fold in [true, false] {
                let graph = Graph(accountant: acc)
                let v = try [x, w1, w2].map { graph.leaf(try $0.copy()) }
                try graph.backward(try body(graph, v, fold: fold), gradient: try r.copy())
                grads.append(v.map { graph.gradient(of: $0)!.array })
            }
            for i in 0..<3 { assertClose(grads[0][i], grads[1][i], tol: 1e-6, "gradient \(i) against relu then conv, scale first: \(scaleFirst)") }
        }
    }

    /// The bytes `conv` (of x and w leaves of g's shapes) leaves allocated: what it keeps for backward
    /// and its output. x stays alive (in a supernet a node's value is kept by its other consumers).
    static func keptBytes(_ g: ConvGeometry, _ conv: (Graph, Variable, Variable) throws -> Variable) throws -> Int {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.leaf(try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: 1))
        let w = graph.leaf(try randomTensor(g.weightShape, acc, seed: 2))
        let before = acc.currentTotal
        let y = try conv(graph, x, w)
        return withExtendedLifetime((graph, x, y)) { acc.currentTotal - before }
    }

    /// The depthwise kernels copy a row into their padded planes, and store a row's partial last
    /// vector, in whole vectors wherever those stay inside the plane (the lanes past the row are
    /// dropped, or rewritten by the rows stored after); the pointwise kernels mask and store dX in
    /// whole vectors. Here every input and output ends right before a page the process may not
    /// touch, so a whole vector past the tensor's end is a crash, not a silent read; on every
    /// fast-path geometry and a pointwise one, with and without the fused ReLU, each gradient with
    /// and without the other, and the results stay the naive reference's.
    func testDepthwise_WholeVectorRowsAndStores_NeverPassTheTensorsEnd() throws {
        let acc = MemoryAccountant()
        let geometries = (Self.depthwise + Self.large).filter(\.supportsReLUInput) + [ConvGeometry(n: 2, cIn: 7, h: 5, w: 5, cOut: 13, kh: 1, kw: 1)]
        XCTAssertGreaterThanOrEqual(geometries.count, 12)
        for (k, g) in geometries.enumerated() {
            let x = try EndOfPageBuffer(try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(900 + k)).array)
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(950 + k))
            let dY = try EndOfPageBuffer(try randomTensor(g.outputShape, acc, seed: UInt64(1000 + k)).array)
            for relu in [false, true] {
                let r = relu ? x.values.map { max($0, 0) } : x.values
                let y = try EndOfPageBuffer(count: g.outputShape.reduce(1, *))
                let fws = try Tensor(shape: [max(1, g.forwardWorkspaceFloats(reluInput: relu))], category: .workspace, accountant: acc)
                Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: fws.ptr, reluInput: relu)
                var yRef = [Float](repeating: 0, count: y.count), dXRef = [Float](repeating: 0, count: x.count)
                var dWRef = [Float](repeating: 0.5, count: w.count)
                r.withUnsafeBufferPointer { rp in
                    Kernels.conv2dForwardNaive(g, x: rp.baseAddress!, w: w.ptr, y: &yRef)
                    Kernels.conv2dBackwardNaive(g, x: rp.baseAddress!, w: w.ptr, dY: dY.ptr, dX: &dXRef, dW: &dWRef)
                }
                if relu { for i in 0..<x.count where x.values[i] <= 0 { dXRef[i] = 0 } }
                assertClose(y.values, yRef, tol: 1e-5, "forward relu \(relu) \(g)")
                for (needX, needW) in [(true, true), (true, false), (false, true)] {
                    let floats = g.backwardWorkspaceFloats(needInputGrad: needX, needWeightGrad: needW, reluInput: relu)
                    let ws = try Tensor(shape: [max(1, floats)], category: .workspace, accountant: acc)
                    let dX = try EndOfPageBuffer(count: x.count)
                    let dW = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
                    Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: needX ? dX.ptr : nil, dW: needW ? dW.ptr : nil,
                                           workspace: ws.ptr, reluInput: relu)
                    if needX { assertClose(dX.values, dXRef, tol: 1e-5, "dX relu \(relu) \(g) (\(needX), \(needW))") }
                    if needW { assertClose(dW.array, dWRef, tol: 1e-4, "dW relu \(relu) \(g) (\(needX), \(needW))") }
                }
            }
        }
    }

    func testInvalidGeometry_IsAnErrorNotACrash() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.constant(try Tensor.zeros([1, 3, 4, 4], category: .data, accountant: acc))
        let w = graph.constant(try Tensor.zeros([4, 3, 7, 7], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.conv2d(x, w)) { XCTAssertTrue("\($0)".contains("does not fit")) }
        let wg = graph.constant(try Tensor.zeros([4, 1, 3, 3], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.conv2d(x, wg, groups: 2))
        let w1 = graph.constant(try Tensor.zeros([4, 3, 1, 1], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.conv2d(x, w1, window: ConvWindow(top: 1, left: 1, height: 4, width: 3))) {
            XCTAssertTrue("\($0)".contains("is not inside the 4×4 plane"), "\($0)")
        }
    }

    // MARK: - Windows: the convolution of a crop, read in place

    /// Windowed geometries: FactorizedReduce's crop(1, 1) → 1×1 stride 2 at odd and even sizes, a
    /// padded 3×3 on an inner window, dilated and grouped, a depthwise and a 1×1 stride-1 one (the
    /// window takes them to im2col), and a window of one pixel.
    static let windowed: [ConvGeometry] = [
        ConvGeometry(n: 3, cIn: 4, h: 6, w: 6, cOut: 2, kh: 1, kw: 1, stride: 2, window: ConvWindow(top: 1, left: 1, height: 5, width: 5)),
        ConvGeometry(n: 2, cIn: 3, h: 7, w: 9, cOut: 2, kh: 1, kw: 1, stride: 2, window: ConvWindow(top: 1, left: 1, height: 6, width: 8)),
        ConvGeometry(n: 2, cIn: 3, h: 8, w: 7, cOut: 4, kh: 3, kw: 3, padding: 1, window: ConvWindow(top: 2, left: 1, height: 4, width: 5)),
        ConvGeometry(n: 2, cIn: 4, h: 9, w: 9, cOut: 6, kh: 3, kw: 3, stride: 2, padding: 2, dilation: 2, groups: 2,
                     window: ConvWindow(top: 0, left: 2, height: 9, width: 6)),
        ConvGeometry(n: 2, cIn: 3, h: 7, w: 7, cOut: 3, kh: 3, kw: 3, padding: 1, groups: 3, window: ConvWindow(top: 1, left: 0, height: 5, width: 7)),
        ConvGeometry(n: 2, cIn: 5, h: 4, w: 5, cOut: 3, kh: 1, kw: 1, window: ConvWindow(top: 1, left: 2, height: 3, width: 3)),
        ConvGeometry(n: 1, cIn: 2, h: 3, w: 3, cOut: 2, kh: 1, kw: 1, window: ConvWindow(top: 2, left: 2, height: 1, width: 1)),
    ]

    /// The windowed tuned path against its references: the naive convolution of the window, and
    /// the naive convolution of the crop (the same sums in the same order: bit for bit), forward
    /// and backward; dX is zero outside the window.
    func testWindow_IsTheConvolutionOfTheCrop_OnEveryGeometry() throws {
        let acc = MemoryAccountant()
        for (k, g) in Self.windowed.enumerated() {
            XCTAssertNil(g.validate(), "\(g)")
            XCTAssertEqual(g.algorithm, .im2col, "\(g)")
            let v = g.window!
            var c = g
            c.window = nil; c.h = v.height; c.w = v.width   // the same convolution of the crop
            XCTAssertEqual(c.outputShape, g.outputShape)
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(300 + k))
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(400 + k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(500 + k))
            let crop = try Tensor(shape: [g.n, g.cIn, v.height, v.width], category: .data, accountant: acc)
            Kernels.cropForward(x.ptr, crop.ptr, planes: g.n * g.cIn, h: g.h, w: g.w, top: v.top, left: v.left, outH: v.height, outW: v.width)

            let ws = try Tensor(shape: [max(1, g.forwardWorkspaceFloats())], category: .workspace, accountant: acc)
            let y = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let yNaive = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let yCrop = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: ws.ptr)
            Kernels.conv2dForwardNaive(g, x: x.ptr, w: w.ptr, y: yNaive.ptr)
            Kernels.conv2dForwardNaive(c, x: crop.ptr, w: w.ptr, y: yCrop.ptr)
            XCTAssertEqual(yNaive.array.map(\.bitPattern), yCrop.array.map(\.bitPattern), "naive forward \(g)")
            assertClose(y.array, yNaive.array, tol: 1e-5, "forward \(g)")

            let bws = try Tensor(shape: [max(1, g.backwardWorkspaceFloats(needInputGrad: true, needWeightGrad: true))], category: .workspace, accountant: acc)
            let dX = try Tensor.filled(x.shape, value: 7, category: .data, accountant: acc)   // overwritten, the border too
            let dXNaive = try Tensor(shape: x.shape, category: .data, accountant: acc)
            let dCrop = try Tensor(shape: crop.shape, category: .data, accountant: acc)
            let dXCrop = try Tensor(shape: x.shape, category: .data, accountant: acc)
            let dW = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
            let dWNaive = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
            let dWCrop = try Tensor.filled(w.shape, value: 0.5, category: .data, accountant: acc)
            Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX.ptr, dW: dW.ptr, workspace: bws.ptr)
            Kernels.conv2dBackwardNaive(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dXNaive.ptr, dW: dWNaive.ptr)
            Kernels.conv2dBackwardNaive(c, x: crop.ptr, w: w.ptr, dY: dY.ptr, dX: dCrop.ptr, dW: dWCrop.ptr)
            Kernels.cropBackward(dCrop.ptr, dXCrop.ptr, planes: g.n * g.cIn, h: g.h, w: g.w, top: v.top, left: v.left, outH: v.height, outW: v.width)
            XCTAssertEqual(dXNaive.array.map(\.bitPattern), dXCrop.array.map(\.bitPattern), "naive dX \(g)")
            XCTAssertEqual(dWNaive.array.map(\.bitPattern), dWCrop.array.map(\.bitPattern), "naive dW \(g)")
            assertClose(dX.array, dXNaive.array, tol: 1e-5, "dX \(g)")
            assertClose(dW.array, dWNaive.array, tol: 1e-4, "dW \(g)")
            for i in 0..<dX.count where dXCrop[i] == 0 && (dX[i] != 0) {   // outside the window: exactly zero
                let p = i % (g.h * g.w), r = p / g.w, col = p % g.w
                XCTAssertTrue(r >= v.top && r < v.top + v.height && col >= v.left && col < v.left + v.width, "dX[\(i)] = \(dX[i]) outside the window of \(g)")
            }
        }
    }

    /// The graph op with a window: gradients against finite differences, the crop never stored.
    func testWindow_Gradients_MatchFiniteDifferences_AndNoCropIsKept() throws {
        let acc = MemoryAccountant()
        for (k, g) in Self.windowed.enumerated() {
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(600 + k))
            let w = try randomTensor(g.weightShape, acc, seed: UInt64(700 + k))
            try GradCheck().check("windowed conv \(g)", inputs: [x, w]) { graph, v in
                try graph.conv2d(v[0], v[1], stride: g.stride, padding: g.padding, dilation: g.dilation, groups: g.groups, window: g.window)
            }
        }
        let g = Self.windowed[0], v = g.window!
        let unfused = try Self.keptBytes(g) { graph, x, w in try graph.conv2d(try graph.crop(x, top: v.top, left: v.left), w, stride: 2) }
        let folded = try Self.keptBytes(g) { graph, x, w in try graph.conv2d(x, w, stride: 2, window: v) }
        XCTAssertEqual(unfused - folded, g.n * g.cIn * v.height * v.width * 4, "the crop is not kept: \(unfused) vs \(folded)")
    }
}

/// Floats that end exactly where a page the process may not read or write begins (mmap, then
/// mprotect(PROT_NONE) on the page after): a kernel that touches one float past the end crashes.
final class EndOfPageBuffer {
    let count: Int
    let ptr: UnsafeMutablePointer<Float>
    private let base: UnsafeMutableRawPointer, mapped: Int

    init(count: Int) throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE))), bytes = count * MemoryLayout<Float>.stride
        let dataPages = (bytes + page - 1) / page
        mapped = (dataPages + 1) * page
        guard let m = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else {
            throw POSIXError(.ENOMEM)
        }
        base = m
        guard mprotect(m + dataPages * page, page, PROT_NONE) == 0 else { munmap(m, mapped); throw POSIXError(.EPERM) }
        self.count = count
        ptr = (m + dataPages * page - bytes).bindMemory(to: Float.self, capacity: count)
        ptr.initialize(repeating: 0, count: count)
    }

    convenience init(_ values: [Float]) throws {
        try self.init(count: values.count)
        for (i, v) in values.enumerated() { ptr[i] = v }
    }

    var values: [Float] { Array(UnsafeBufferPointer(start: ptr, count: count)) }

    deinit { munmap(base, mapped) }
}
