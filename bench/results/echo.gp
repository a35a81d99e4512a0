
set terminal pngcairo size 900,560 font "sans,10"
set output "../../docs/bench-echo.png"
set title "echo, 16-byte messages, 1 in flight per connection, medians of 5 runs\nAMD EPYC, 2 cores, Linux 6.18.44-fc-v445; server on cpu 0, loadgen on cpu 1"
set logscale x 10
set xlabel "connections"
set ylabel "echoes per second"
set format y "%.0s%c"
set yrange [0:*]
set xrange [0.8:1250.0]
set xtics (1, 10, 100, 1000)
set grid
set key left top
plot "echo.dat" using 1:2 with linespoints lw 2 pt 7 dt 2 lc rgb "#777777" title columnheader(2), \
     "echo.dat" using 1:3 with linespoints lw 2 pt 7 title columnheader(3), \
     "echo.dat" using 1:4 with linespoints lw 2 pt 7 title columnheader(4), \
     "echo.dat" using 1:5 with linespoints lw 2 pt 7 title columnheader(5)
