// Fused FLAME linear blend skinning: the per-vertex half of capture.flame.lbs in one pass.
//
// The per-joint half (joint regression, Rodrigues, the kinematic chain, the pose feature) is a few
// hundred flops per batch item and runs in torch before this kernel (capture/lbs_cuda/__init__.py).
// This kernel does the part that touches every vertex:
//
//   v_shaped = v_template + sum_k betas[b, k] * shapedirs[k]           (identity + expression)
//   v_posed  = v_shaped   + sum_p pose_feature[b, p] * posedirs[p]     (pose correctives, P = (J-1)*9)
//   T        = sum_j lbs_weights[j, v] * transforms[b, j]              (3x4 blended rigid transform)
//   out      = T[:, :3] @ v_posed + T[:, 3]
//
// One thread per (batch item, vertex): blockIdx.y = b, blockIdx.x * blockDim.x + threadIdx.x = v.
//
// Layouts (all float32, contiguous). The model tensors are "planar" (vertex index fastest) so that the
// 32 threads of a warp, which handle 32 consecutive vertices, read 32 consecutive floats for every
// (component, coordinate) pair: each load instruction is one fully used 128-byte transaction.
//   v_template  [3, V]        row c = coordinate c of every vertex
//   shapedirs   [K, 3, V]     DECA's [V, 3, K] with K moved first
//   posedirs    [P, 3, V]     DECA's posedirs_T [P, V*3] (rows are v*3 + c) split into [P, 3, V]
//   lbs_weights [J, V]
// Per batch item (small; staged in shared memory once per block):
//   betas        [B, K]
//   pose_feature [B, P]       (R_j - I) of joints 1..J-1, row-major 3x3 each
//   transforms   [B, J, 12]   top 3x4 rows of each joint's skinning matrix, row-major
// Output:
//   vertices     [B, V, 3]
//
// Plain C, no framework types and no #include, so the same text builds with nvcc (pycuda, tests) and
// NVRTC (CuPy). The launchers pass the arguments flat in the order of flame_lbs_skin's signature
// (capture/lbs_cuda/launcher.py: KERNEL_ARGS); the kernel gathers them into LbsParams at once.

#define LBS_MAX_K 400  // FLAME 2020: 300 identity + 100 expression components
#define LBS_MAX_J 8    // FLAME has 5 joints; a little room for other trees
#define LBS_MAX_P ((LBS_MAX_J - 1) * 9)

struct LbsParams {
    const float* v_template;    // [3, V]
    const float* shapedirs;     // [K, 3, V]
    const float* posedirs;      // [P, 3, V]
    const float* lbs_weights;   // [J, V]
    const float* betas;         // [B, K]
    const float* pose_feature;  // [B, P]
    const float* transforms;    // [B, J, 12]
    float* vertices;            // [B, V, 3] (output)
    int B;
    int V;
    int K;
    int J;
};

// Sum over the rows of a planar [N, 3, V] basis, weighted by coef[N]; the three coordinates of one
// vertex accumulate separately, in component order, like the GEMM in torch.
__device__ __forceinline__ void blend_planar(const float* __restrict__ basis, const float* coef, int n,
                                             int V, int v, float& x, float& y, float& z) {
    const long long plane = V;
    const float* row = basis + v;
#pragma unroll 4
    for (int i = 0; i < n; ++i) {
        const float c = coef[i];
        x = fmaf(c, __ldg(row), x);
        y = fmaf(c, __ldg(row + plane), y);
        z = fmaf(c, __ldg(row + 2 * plane), z);
        row += 3 * plane;
    }
}

__device__ void lbs_skin_vertex(const LbsParams& p, const float* s_betas, const float* s_pose,
                                const float* s_T, int b, int v) {
    const int V = p.V;
    const int P = (p.J - 1) * 9;

    float dx = 0.f, dy = 0.f, dz = 0.f;
    blend_planar(p.shapedirs, s_betas, p.K, V, v, dx, dy, dz);
    float x = __ldg(p.v_template + v) + dx;
    float y = __ldg(p.v_template + V + v) + dy;
    float z = __ldg(p.v_template + 2 * V + v) + dz;

    float px = 0.f, py = 0.f, pz = 0.f;
    blend_planar(p.posedirs, s_pose, P, V, v, px, py, pz);
    x += px;
    y += py;
    z += pz;

    float T[12];
#pragma unroll
    for (int i = 0; i < 12; ++i) T[i] = 0.f;
    for (int j = 0; j < p.J; ++j) {
        const float w = __ldg(p.lbs_weights + (long long)j * V + v);
#pragma unroll
        for (int i = 0; i < 12; ++i) T[i] = fmaf(w, s_T[j * 12 + i], T[i]);
    }

    float* out = p.vertices + ((long long)b * V + v) * 3;
    out[0] = T[0] * x + T[1] * y + T[2] * z + T[3];
    out[1] = T[4] * x + T[5] * y + T[6] * z + T[7];
    out[2] = T[8] * x + T[9] * y + T[10] * z + T[11];
}

extern "C" __global__ void flame_lbs_skin(const float* __restrict__ v_template,
                                          const float* __restrict__ shapedirs,
                                          const float* __restrict__ posedirs,
                                          const float* __restrict__ lbs_weights,
                                          const float* __restrict__ betas,
                                          const float* __restrict__ pose_feature,
                                          const float* __restrict__ transforms,
                                          float* __restrict__ vertices,
                                          int B, int V, int K, int J) {
    const LbsParams p = {v_template, shapedirs, posedirs, lbs_weights, betas, pose_feature,
                         transforms, vertices, B, V, K, J};
    // Every vertex of batch item b uses the same coefficients and joint transforms: read them from
    // global memory once per block, not once per thread.
    __shared__ float s_betas[LBS_MAX_K];
    __shared__ float s_pose[LBS_MAX_P];
    __shared__ float s_T[LBS_MAX_J * 12];

    const int b = blockIdx.y;
    if (b >= p.B) return;  // whole block: safe before the barrier
    const int P = (p.J - 1) * 9;
    for (int i = threadIdx.x; i < p.K; i += blockDim.x) s_betas[i] = p.betas[(long long)b * p.K + i];
    for (int i = threadIdx.x; i < P; i += blockDim.x) s_pose[i] = p.pose_feature[(long long)b * P + i];
    for (int i = threadIdx.x; i < p.J * 12; i += blockDim.x) s_T[i] = p.transforms[(long long)b * p.J * 12 + i];
    __syncthreads();

    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= p.V) return;
    lbs_skin_vertex(p, s_betas, s_pose, s_T, b, v);
}
