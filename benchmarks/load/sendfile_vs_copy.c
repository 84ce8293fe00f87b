// What the kernel itself costs: sends a file over a loopback TCP connection to a reader on CPU 1, from CPU 0, with
// sendfile(2) (mode 0), splice(2) through a 1 MiB pipe (2), sendfile in 64 KiB calls (3), or pread + write in 64 KiB
// chunks (1), and prints the throughput and the sender's CPU per GiB. No .NET involved: it tells what any server,
// ours or nginx, can expect from each call on this machine.
//
//   gcc -O2 -o /tmp/svc benchmarks/load/sendfile_vs_copy.c
//   head -c 268435456 /dev/urandom > /tmp/big.bin && cat /tmp/big.bin > /dev/null
//   for m in 0 2 3 1; do /tmp/svc $m /tmp/big.bin 6; done
//
// Seen on the 2-core VM of benchmarks/results (Linux 6.18): sendfile 1,416-1,665 MiB/s at 0.60-0.70 s/GiB, splice
// 1,348-1,373 at 0.70-0.72, sendfile 64K 1,540-1,609 at 0.63-0.66, pread+write 3,309-3,473 MiB/s at 0.29-0.31 s/GiB:
// on loopback the page-cache pages that sendfile hangs on the skbs cost more than two copies of the bytes.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sched.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); const char*path=argv[2]; int reps=atoi(argv[3]);
  int ls=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(ls,(void*)&a,sizeof a); listen(ls,1); socklen_t l=sizeof a; getsockname(ls,(void*)&a,&l);
  if(fork()==0){ cpu_set_t c;CPU_ZERO(&c);CPU_SET(1,&c);sched_setaffinity(0,sizeof c,&c);
    int s=socket(AF_INET,SOCK_STREAM,0); connect(s,(void*)&a,sizeof a); char*b=malloc(1<<20); while(read(s,b,1<<20)>0); exit(0);}
  cpu_set_t c;CPU_ZERO(&c);CPU_SET(0,&c);sched_setaffinity(0,sizeof c,&c);
  int s=accept(ls,0,0); int one=1; setsockopt(s,IPPROTO_TCP,TCP_NODELAY,&one,4);
  int f=open(path,O_RDONLY); off_t sz=lseek(f,0,SEEK_END); char*buf=malloc(1<<16);
  struct rusage r0,r1; getrusage(RUSAGE_SELF,&r0); double t0=now();
  for(int i=0;i<reps;i++){ off_t off=0;
    if(mode==0){ while(off<sz){ ssize_t n=sendfile(s,f,&off,sz-off); if(n<=0){perror("sf");return 1;} } }
    else if(mode==2){ int p[2]; pipe(p); fcntl(p[1],F_SETPIPE_SZ,1<<20); while(off<sz){ ssize_t n=splice(f,&off,p[1],0,1<<20,SPLICE_F_MOVE); if(n<=0){perror("sp");return 1;} ssize_t w=0; while(w<n){ssize_t k=splice(p[0],0,s,0,n-w,SPLICE_F_MOVE|SPLICE_F_MORE); if(k<=0){perror("sp2");return 1;} w+=k;} } close(p[0]);close(p[1]); }
    else if(mode==3){ while(off<sz){ ssize_t n=sendfile(s,f,&off,65536); if(n<=0){perror("sf");return 1;} } }
    else { while(off<sz){ ssize_t n=pread(f,buf,1<<16,off); ssize_t w=0; while(w<n){ssize_t k=write(s,buf+w,n-w); if(k<=0){perror("w");return 1;} w+=k;} off+=n; } } }
  double t1=now(); getrusage(RUSAGE_SELF,&r1);
  double cpu=(r1.ru_utime.tv_sec-r0.ru_utime.tv_sec)+(r1.ru_utime.tv_usec-r0.ru_utime.tv_usec)/1e6+(r1.ru_stime.tv_sec-r0.ru_stime.tv_sec)+(r1.ru_stime.tv_usec-r0.ru_stime.tv_usec)/1e6;
  double gib=(double)sz*reps/(1<<30);
  printf("%s: %.0f MiB/s, sender CPU %.3f s/GiB\n", mode==0?"sendfile":mode==2?"splice 1MiB pipe":mode==3?"sendfile 64K":"pread+write", gib*1024/(t1-t0), cpu/gib);
  close(s); wait(0); return 0; }
