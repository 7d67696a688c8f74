// The depthwise forward with channels in the vector lanes (CEspalierKernels' depthwise8.c, the
// fused separable unit's forward) against its reference, the plane-by-plane gather
// (`Kernels.depthwiseForward`), bit for bit on every geometry it takes: 3×3 and 5×5, stride 1 and
// 2, dilation 1 and 2, planes 28², 14², 7², odd and 1×1, channels 8 to 24, with and without the ReLU.

import EspalierCore
import EspalierTestSupport
import XCTest

final class DepthwiseLanesTests: XCTestCase {
    /// x with negative values, +0 and −0 among them, so the ReLU's choices show in the bits.
    private func input(_ count: Int, seed: UInt64) -> [Float] {
        var rng = RNG(seed: seed)
        return (0..<count).map { i in i % 11 == 3 ? 0 : i % 13 == 5 ? -0.0 : rng.uniform() * 2 - 1 }
    }

    func testLanesForward_IsThePlaneGatherBitForBit() throws {
        #if arch(x86_64)
        // (C, H, W, k, stride, padding, dilation)
        let geometries: [(Int, Int, Int, Int, Int, Int, Int)] = [
            (16, 28, 28, 3, 1, 1, 1), (16, 28, 28, 5, 1, 2, 1), (16, 28, 28, 3, 1, 2, 2), (16, 28, 28, 5, 1, 4, 2),
            (16, 28, 28, 3, 2, 1, 1), (16, 28, 28, 5, 2, 2, 1), (16, 28, 28, 3, 2, 2, 2), (16, 28, 28, 5, 2, 4, 2),
            (32, 14, 14, 3, 1, 1, 1), (32, 14, 14, 5, 2, 2, 1), (64, 7, 7, 5, 1, 2, 1), (64, 7, 7, 3, 1, 2, 2),
            (8, 9, 11, 3, 1, 1, 1), (8, 9, 11, 5, 2, 2, 1), (24, 5, 3, 5, 1, 4, 2), (8, 1, 1, 3, 1, 1, 1),
            (8, 6, 6, 3, 1, 0, 1), (8, 7, 7, 5, 2, 1, 1),
        ]
        for (i, (c, h, w, k, s, p, d)) in geometries.enumerated() {
            let n = 3
            let g = ConvGeometry(n: n, cIn: c, h: h, w: w, cOut: c, kh: k, kw: k, stride: s, padding: p, dilation: d, groups: c)
            XCTAssertTrue(Kernels.depthwiseRunsChannelsInLanes(g), "geometry \(i) should run in lanes")
            guard Kernels.depthwiseRunsChannelsInLanes(g) else { continue }
            let x = input(n * c * h * w, seed: UInt64(i)), wd = input(c * k * k, seed: UInt64(100 + i))
            let howo = g.hOut * g.wOut
            for relu in [true, false] {
                var reference = [Float](repeating: .nan, count: n * c * howo)
                var ws = [Float](repeating: 0, count: max(1, g.forwardWorkspaceFloats(reluInput: relu)))
                Kernels.conv2dForward(g, x: x, w: wd, y: &reference, workspace: &ws, reluInput: relu)
                var lanes = [Float](repeating: .nan, count: n * c * howo)
                // Zeroed once, then reused by every sample as the unit does (the kernel writes only
                // P8's interior: a sample's leftovers must not reach the next).
                var scratch = [Float](repeating: 0, count: Kernels.depthwiseForwardSampleInLanesFloats(g))
                x.withUnsafeBufferPointer { xp in lanes.withUnsafeMutableBufferPointer { tp in
                    for s in 0..<n {
                        Kernels.depthwiseForwardSampleInLanes(g, x: xp.baseAddress! + s * c * h * w, w: wd, t: tp.baseAddress! + s * c * howo,
                                                              reluInput: relu, workspace: &scratch)
                    }
                } }
                XCTAssertEqual(lanes.map(\.bitPattern), reference.map(\.bitPattern), "geometry \(i) \(g) relu \(relu)")
            }
        }
        #else
        // The kernel is x86-64 code; elsewhere the plane-by-plane path runs every geometry.
        let g = ConvGeometry(n: 1, cIn: 16, h: 8, w: 8, cOut: 16, kh: 3, kw: 3, stride: 1, padding: 1, dilation: 1, groups: 16)
        XCTAssertFalse(Kernels.depthwiseRunsChannelsInLanes(g))
        #endif
    }

    /// What the path does not take: channels not a multiple of 8, other kernels, stride 3.
    func testLanesForward_TakesOnlyItsGeometries() {
        func g(_ c: Int, _ k: Int, _ s: Int, _ d: Int) -> ConvGeometry {
            ConvGeometry(n: 1, cIn: c, h: 8, w: 8, cOut: c, kh: k, kw: k, stride: s, padding: d * (k - 1) / 2, dilation: d, groups: c)
        }
        XCTAssertFalse(Kernels.depthwiseRunsChannelsInLanes(g(12, 3, 1, 1)))
        XCTAssertFalse(Kernels.depthwiseRunsChannelsInLanes(g(16, 7, 1, 1)))
        XCTAssertFalse(Kernels.depthwiseRunsChannelsInLanes(g(16, 3, 3, 1)))
        XCTAssertFalse(Kernels.depthwiseRunsChannelsInLanes(g(16, 3, 1, 3)))
    }
}
